// moe — a sparse MoE FFN layer on the CPU: route, group by expert, run each expert on its tokens
// only, combine in a fixed order, rescale (paper formulas (2), (4), (6)).
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "moe/aggregate.hpp"
#include "moe/config.hpp"
#include "moe/dispatch.hpp"
#include "moe/ffn.hpp"
#include "moe/router.hpp"
#include "moe/thread_pool.hpp"
#include "moe/types.hpp"

namespace moe {

struct MoEConfig {
  int top_k = 2;                                ///< k, 1 <= k <= N
  TopKWeights weights = TopKWeights::kSoftmax;  ///< reference semantics by default
  std::optional<double> scale;                  ///< formula (6); unset: N/k

  // A constructor rather than an aggregate so `{k}` and `{k, weights}` need no warning-prone
  // partial initialisation.
  MoEConfig(int k = 2, TopKWeights w = TopKWeights::kSoftmax, std::optional<double> s = std::nullopt)
      : top_k(k), weights(w), scale(s) {}
};

/// What one forward routed where (opt-in: pass a pointer to forward()).
template <class T>
struct RoutingRecord {
  IdMatrix expert_ids;                   ///< T x k, best first
  RowMatrix<T> weights;                  ///< T x k, G(x)_i as combined (before the rescale)
  std::vector<Index> tokens_per_expert;  ///< N
};

template <class T>
class MoELayer;

/// Caller-owned scratch for MoELayer. reserve(layer, T) once and forward() allocates nothing of
/// its own for up to T tokens; a bigger call grows it.
template <class T>
class MoEWorkspace {
 public:
  void reserve(const MoELayer<T>& layer, Index tokens) { reserve(layer, tokens, layer.top_k()); }
  void reserve(const MoELayer<T>& layer, Index tokens, Index k);

  /// The grouping the last forward used: dispatch().offsets.back() is the number of
  /// (token, expert) rows it computed, always T·k.
  const ExpertDispatch& dispatch() const { return dispatch_; }

 private:
  friend class MoELayer<T>;
  template <class V>
  static void grow(V& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
  }
  std::vector<T> logits_, weights_, xg_, g_, h_, yp_;
  std::vector<std::int32_t> ids_;
  std::vector<Index> hidden_offsets_;
  std::vector<std::pair<int, Index>> tasks_;  // (expert, column block)
  ExpertDispatch dispatch_;
};

/// Sparse MoE FFN layer, paper formulas (2), (4), (6):
///   y = scale · sum_{i in K(x)} G(x)_i · E_i(x),   E_i = SwiGLU FFN on expert i's weights.
/// Forward: logits x·W_r → route_top_k → stable counting sort of (token, slot) pairs by expert →
/// per expert, formula (4) on exactly the tokens routed to it (an expert with no tokens costs
/// nothing) → per token, sum over slots in slot order → × scale.
/// Work is cut into fixed (expert, column block) tasks, so the output is bitwise identical for
/// any ThreadPool size, including none.
template <class T>
class MoELayer {
 public:
  /// Owns the experts. router: d x N (HF gate.weight [N, d] as stored); may be empty (0x0) for a
  /// layer used only through forward_routed().
  MoELayer(std::vector<FfnWeights<T>> experts, ColMatrix<T> router, MoEConfig config)
      : owned_(std::move(experts)), router_(std::move(router)), config_(config) {
    for (const auto& e : owned_) experts_.push_back(e.view());
    validate();
  }
  /// Views: the caller keeps the expert weights alive (e.g. a memory-mapped checkpoint).
  MoELayer(std::vector<FfnWeightsView<T>> experts, ColMatrix<T> router, MoEConfig config)
      : experts_(std::move(experts)), router_(std::move(router)), config_(config) {
    validate();
  }
  /// A copy of an owning layer owns copies of the experts and views them, never the original's
  /// memory; a copy of a view layer views the same memory as the original.
  MoELayer(const MoELayer& o)
      : owned_(o.owned_),
        experts_(o.owned_.empty() ? o.experts_ : std::vector<FfnWeightsView<T>>{}),
        router_(o.router_),
        config_(o.config_),
        scale_(o.scale_) {
    for (const auto& e : owned_) experts_.push_back(e.view());
  }
  // Moving keeps each expert matrix's heap buffer where it is, so the views stay valid.
  MoELayer(MoELayer&&) noexcept = default;
  MoELayer& operator=(const MoELayer& o) { return *this = MoELayer(o); }
  MoELayer& operator=(MoELayer&&) noexcept = default;

  int num_experts() const { return static_cast<int>(experts_.size()); }  ///< N
  int top_k() const { return config_.top_k; }                            ///< k
  double scale() const { return scale_; }                                ///< formula (6)
  Index model_dim() const { return experts_.front().model_dim(); }       ///< d
  const FfnWeightsView<T>& expert(int e) const { return experts_.at(static_cast<std::size_t>(e)); }
  const ColMatrix<T>& router_weight() const { return router_; }
  const MoEConfig& config() const { return config_; }

  /// x: T x d row-major; y: T x d row-major (written; must not alias x).
  void forward(const ConstRowRef<T>& x, RowRef<T> y, MoEWorkspace<T>& ws, ThreadPool* pool = nullptr,
               RoutingRecord<T>* record = nullptr) const {
    MOE_CHECK(router_.size() > 0, "MoELayer::forward: this layer has no router weight; use forward_routed");
    const Index tokens = x.rows(), k = config_.top_k;
    MOE_CHECK(x.cols() == model_dim(),
              "MoELayer::forward: x has " << x.cols() << " columns, the layer expects d=" << model_dim());
    ws.reserve(*this, tokens, k);
    Eigen::Map<RowMatrix<T>> logits(ws.logits_.data(), tokens, num_experts());
    Eigen::Map<IdMatrix> ids(ws.ids_.data(), tokens, k);
    Eigen::Map<RowMatrix<T>> weights(ws.weights_.data(), tokens, k);
    router_logits<T>(x, router_, logits);
    route_top_k<T>(logits, config_.top_k, config_.weights, ids, weights);
    forward_routed(x, ids, weights, y, ws, pool, record);
  }

  /// Expert computation for a routing made elsewhere (any router): ids, weights: T x k', k' <= N
  /// ids in [0, N), finite weights. Applies this layer's scale.
  void forward_routed(const ConstRowRef<T>& x, const Eigen::Ref<const IdMatrix>& ids,
                      const ConstRowRef<T>& weights, RowRef<T> y, MoEWorkspace<T>& ws,
                      ThreadPool* pool = nullptr, RoutingRecord<T>* record = nullptr) const {
    const Index tokens = x.rows(), d = model_dim(), k = ids.cols();
    const int n = num_experts();
    MOE_CHECK(x.cols() == d, "MoELayer: x has " << x.cols() << " columns, the layer expects d=" << d);
    MOE_CHECK(y.rows() == tokens && y.cols() == d,
              "MoELayer: y is " << y.rows() << "x" << y.cols() << ", expected " << tokens << "x" << d);
    MOE_CHECK(ids.rows() == tokens && weights.rows() == tokens && weights.cols() == k,
              "MoELayer: routing is ids " << ids.rows() << "x" << k << ", weights " << weights.rows() << "x"
                                          << weights.cols() << "; expected " << tokens << "xk");
    MOE_CHECK(k >= 1 && k <= n, "MoELayer: routing has k=" << k << ", must be in [1, N=" << n << "]");
    for (Index t = 0; t < tokens; ++t)
      for (Index s = 0; s < k; ++s)
        MOE_CHECK(std::isfinite(weights(t, s)),
                  "MoELayer: routing weight of token " << t << " slot " << s << " is " << weights(t, s));
    ws.reserve(*this, tokens, k);
    ExpertDispatch& dp = ws.dispatch_;
    build_dispatch(ids, n, dp);

    // Hidden-activation offsets and the task lists: only experts with tokens get tasks.
    auto& hoff = ws.hidden_offsets_;
    hoff.resize(static_cast<std::size_t>(n) + 1);
    hoff[0] = 0;
    ws.tasks_.clear();
    for (int e = 0; e < n; ++e) {
      const Index c = dp.counts[static_cast<std::size_t>(e)];
      hoff[static_cast<std::size_t>(e) + 1] = hoff[static_cast<std::size_t>(e)] + c * expert(e).hidden_dim();
      if (c == 0) continue;
      for (Index b = 0; b < detail::num_column_blocks(expert(e).hidden_dim()); ++b)
        ws.tasks_.emplace_back(e, b);
    }
    const auto hidden_tasks = static_cast<Index>(ws.tasks_.size());
    for (int e = 0; e < n; ++e) {
      if (dp.counts[static_cast<std::size_t>(e)] == 0) continue;
      for (Index b = 0; b < detail::num_column_blocks(d); ++b) ws.tasks_.emplace_back(e, b);
    }
    const auto down_tasks = static_cast<Index>(ws.tasks_.size()) - hidden_tasks;

    const Index rows = tokens * k;
    Eigen::Map<RowMatrix<T>> xg(ws.xg_.data(), rows, d);
    constexpr Index kRowChunk = 64;
    parallel_for(pool, (rows + kRowChunk - 1) / kRowChunk, [&](Index c) {
      for (Index r = c * kRowChunk; r < std::min(rows, (c + 1) * kRowChunk); ++r)
        xg.row(r) = x.row(dp.token[static_cast<std::size_t>(r)]);
    });
    // Expert e's tokens, and its slices of the scratch buffers (layout by its row count).
    auto with_expert = [&](int e, auto&& f) {
      const auto u = static_cast<std::size_t>(e);
      const Index c = dp.counts[u];
      const Eigen::Map<const RowMatrix<T>> xe(xg.data() + dp.offsets[u] * d, c, d);
      detail::with_scratch_layout(c, expert(e).hidden_dim(), d, ws.g_.data() + hoff[u],
                                  ws.h_.data() + hoff[u], ws.yp_.data() + dp.offsets[u] * d,
                                  [&](auto& g, auto& h, auto& ye) { f(xe, g, h, ye); });
    };
    parallel_for(pool, hidden_tasks, [&](Index i) {
      // (Not a structured binding: C++17 lambdas cannot capture those; clang rejects it.)
      const int e = ws.tasks_[static_cast<std::size_t>(i)].first;
      const Index b = ws.tasks_[static_cast<std::size_t>(i)].second;
      with_expert(e, [&](const auto& xe, auto& g, auto& h, auto&) {
        detail::swiglu_hidden_block(expert(e), xe, g, h, b);
      });
    });
    parallel_for(pool, down_tasks, [&](Index i) {
      const int e = ws.tasks_[static_cast<std::size_t>(hidden_tasks + i)].first;
      const Index b = ws.tasks_[static_cast<std::size_t>(hidden_tasks + i)].second;
      with_expert(
          e, [&](const auto&, auto&, auto& h, auto& ye) { detail::down_proj_block(expert(e), h, ye, b); });
    });
    // Combine (formula 2) in slot order, then rescale (formula 6); tokens are independent.
    const T scale = static_cast<T>(scale_);
    constexpr Index kTokenChunk = 16;
    parallel_for(pool, (tokens + kTokenChunk - 1) / kTokenChunk, [&](Index c) {
      for (Index t = c * kTokenChunk; t < std::min(tokens, (c + 1) * kTokenChunk); ++t) {
        y.row(t).setZero();  // 0 + a == a exactly: the sum is still slot 0, then slot 1, ...
        for (Index s = 0; s < k; ++s) {
          const auto e = static_cast<std::size_t>(ids(t, s));
          const Index local = dp.row_of[static_cast<std::size_t>(t * k + s)] - dp.offsets[e];
          const auto row = detail::scratch_row(ws.yp_.data() + dp.offsets[e] * d, dp.counts[e], d, local);
          y.row(t) += weights(t, s) * row;
        }
        y.row(t) *= scale;
      }
    });
    if (record) {
      record->expert_ids = ids;
      record->weights = weights;
      record->tokens_per_expert = dp.counts;
    }
  }

 private:
  void validate() {
    MOE_CHECK(!experts_.empty(), "MoELayer: no experts (N = 0)");
    const Index d = experts_.front().model_dim();
    for (std::size_t e = 0; e < experts_.size(); ++e)
      MOE_CHECK(experts_[e].model_dim() == d,
                "MoELayer: expert " << e << " has d=" << experts_[e].model_dim() << ", expert 0 has d=" << d);
    MOE_CHECK(router_.size() == 0 || (router_.rows() == d && router_.cols() == num_experts()),
              "MoELayer: router weight is " << router_.rows() << "x" << router_.cols()
                                            << ", expected d x N = " << d << "x" << num_experts());
    MOE_CHECK(config_.top_k >= 1 && config_.top_k <= num_experts(),
              "MoELayer: k=" << config_.top_k << " must be in [1, N=" << num_experts() << "]");
    scale_ = config_.scale ? *config_.scale : default_scale(num_experts(), config_.top_k);
    MOE_CHECK(std::isfinite(scale_), "MoELayer: scale " << scale_ << " is not finite");
  }

  std::vector<FfnWeights<T>> owned_;
  std::vector<FfnWeightsView<T>> experts_;
  ColMatrix<T> router_;
  MoEConfig config_;
  double scale_ = 1.0;
};

template <class T>
void MoEWorkspace<T>::reserve(const MoELayer<T>& layer, Index tokens, Index k) {
  const int n = layer.num_experts();
  const Index d = layer.model_dim(), pairs = tokens * k;
  Index max_m = 0, blocks = 0;
  for (int e = 0; e < n; ++e) {
    max_m = std::max(max_m, layer.expert(e).hidden_dim());
    blocks += detail::num_column_blocks(layer.expert(e).hidden_dim()) + detail::num_column_blocks(d);
  }
  const auto u = [](Index v) { return static_cast<std::size_t>(v); };
  grow(logits_, u(tokens * n));
  grow(ids_, u(pairs));
  grow(weights_, u(pairs));
  grow(xg_, u(pairs * d));
  grow(yp_, u(pairs * d));
  grow(g_, u(pairs * max_m));
  grow(h_, u(pairs * max_m));
  hidden_offsets_.reserve(u(n) + 1);
  tasks_.reserve(u(blocks));
  dispatch_.reserve(pairs, n);
}

}  // namespace moe
