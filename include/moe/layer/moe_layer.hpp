// moe — a sparse MoE FFN layer on the CPU: route, group by expert, run each expert on its tokens
// only, combine in a fixed order, rescale (paper formulas (2), (4), (6)).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/thread_pool.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/activation.hpp"
#include "moe/layer/aggregate.hpp"
#include "moe/layer/detail/expert_plan.hpp"
#include "moe/layer/detail/transpose.hpp"
#include "moe/layer/dispatch.hpp"
#include "moe/layer/ffn.hpp"
#include "moe/layer/router.hpp"
#include "moe/layer/router_gate.hpp"
#include "moe/layer/routing_stats.hpp"

namespace moe {

/// How a MoELayer routes and combines. Presets for real model families are in presets.hpp.
struct MoEConfig {
  int top_k = 2;                ///< k, 1 <= k <= N (forward(x, k, ...) may override per call)
  RouterOptions router;         ///< score, selection, groups, renormalisation, capacity, noise
  std::optional<double> scale;  ///< formula (6) on the routed sum; unset: N/k of the call
  GluActivation activation;     ///< of every expert (routed and shared)
  bool scale_input = false;     ///< Llama 4: expert i computes E_i(G_i · x), combined with weight 1

  /// The LLaMA-MoE reference layer: softmax over N, top-k (compared on the logits), weights as
  /// TopKWeights says. (A constructor so `{k}` and `{k, weights}` need no partial initialisation.)
  MoEConfig(int k = 2, TopKWeights w = TopKWeights::kSoftmax, std::optional<double> s = std::nullopt)
      : top_k(k), router(RouterOptions::top_k_softmax(w)), scale(s) {}
  MoEConfig(int k, const RouterOptions& r, std::optional<double> s, GluActivation act = {},
            bool scale_in = false)
      : top_k(k), router(r), scale(s), activation(act), scale_input(scale_in) {}
};

/// What one forward routed where (opt-in: pass a pointer to forward()).
template <class T>
struct RoutingRecord {
  IdMatrix expert_ids;                   ///< T x k, best first; -1 = dropped by the expert capacity
  RowMatrix<T> weights;                  ///< T x k, G(x)_i as combined (before the rescale)
  std::vector<Index> tokens_per_expert;  ///< N
  RoutingStats stats;                    ///< filled by forward() (not by forward_routed)
};

template <class T, class W = T>
class MoELayer;

/// Caller-owned scratch for MoELayer. reserve(layer, T) once and forward() allocates nothing of
/// its own for up to T tokens; a bigger call grows it.
template <class T>
class MoEWorkspace {
 public:
  template <class W>
  void reserve(const MoELayer<T, W>& layer, Index tokens) {
    reserve(layer, tokens, layer.top_k());
  }
  template <class W>
  void reserve(const MoELayer<T, W>& layer, Index tokens, Index k);

  /// The grouping the last forward used: dispatch().offsets.back() is the number of
  /// (token, expert) rows it computed, always T·k.
  const ExpertDispatch& dispatch() const { return plan_.dispatch; }

 private:
  template <class, class>
  friend class MoELayer;
  template <class V>
  static void grow(V& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
  }
  std::vector<T> logits_, weights_, shared_out_, shared_gate_;
  std::vector<std::int32_t> ids_;
  detail::ExpertPlan plan_;
  detail::ExpertScratch<T> scratch_;
  RouterScratch<T> router_scratch_;
  GateScratch<T> gate_scratch_;
  FfnWorkspace<T> shared_ws_;
};

/// Sparse MoE FFN layer, paper formulas (2), (4), (6):
///   y = scale · sum_{i in K(x)} G(x)_i · E_i(x)  [+ shared(x), optionally gated by sigmoid(x·w)]
/// E_i: the gated FFN (SwiGLU, formula 4, or config.activation) on expert i's weights; with
/// config.scale_input (Llama 4) the term is E_i(G(x)_i · x) instead.
/// Forward: logits z(x) (router_gate.hpp) → route (router.hpp) → stable counting sort of the kept
/// (token, slot) pairs by expert → per expert, its FFN on exactly the tokens routed to it (an
/// expert with no tokens costs nothing) → per token, sum over slots in slot order → × scale →
/// + shared experts. Work is cut into fixed (expert, column block) tasks, so the output is bitwise
/// identical for any ThreadPool size, including none.
/// T: activations, router and shared experts. W: how the routed experts' weights are stored — T,
/// or with T = float, Eigen::bfloat16 / Eigen::half (convert_weights, ffn_weights.hpp): half the bytes per
/// token at decode, each weight widened exactly and accumulated in float.
template <class T, class W>
class MoELayer {
  static_assert(detail::kSupportedWeights<T, W>,
                "MoELayer<T, W>: experts stored as T, or as Eigen::bfloat16 / Eigen::half with T = float");

 public:
  using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  /// Owns the experts. router: d x N (HF gate.weight [N, d] as stored); may be empty (0x0) for a
  /// layer used only through forward_routed().
  MoELayer(std::vector<FfnWeights<W>> experts, ColMatrix<T> router, MoEConfig config)
      : MoELayer(std::move(experts), RouterGate<T>(std::move(router)), config) {}
  MoELayer(std::vector<FfnWeights<W>> experts, RouterGate<T> gate, MoEConfig config)
      : owned_(std::move(experts)), gate_(std::move(gate)), config_(config) {
    for (const auto& e : owned_) experts_.push_back(e.view());
    validate();
  }
  /// Views: the caller keeps the expert weights alive (e.g. a memory-mapped checkpoint).
  MoELayer(std::vector<FfnWeightsView<W>> experts, ColMatrix<T> router, MoEConfig config)
      : MoELayer(std::move(experts), RouterGate<T>(std::move(router)), config) {}
  MoELayer(std::vector<FfnWeightsView<W>> experts, RouterGate<T> gate, MoEConfig config)
      : experts_(std::move(experts)), gate_(std::move(gate)), config_(config) {
    validate();
  }
  /// A copy of an owning layer owns copies of the experts and views them, never the original's
  /// memory; a copy of a view layer views the same memory as the original.
  MoELayer(const MoELayer& o)
      : owned_(o.owned_),
        experts_(o.owned_.empty() ? o.experts_ : std::vector<FfnWeightsView<W>>{}),
        gate_(o.gate_),
        config_(o.config_),
        shared_(o.shared_),
        shared_gate_(o.shared_gate_) {
    for (const auto& e : owned_) experts_.push_back(e.view());
  }
  // Moving keeps each expert matrix's heap buffer where it is, so the views stay valid.
  MoELayer(MoELayer&&) noexcept = default;
  MoELayer& operator=(const MoELayer& o) { return *this = MoELayer(o); }
  MoELayer& operator=(MoELayer&&) noexcept = default;

  /// Always-on experts added to every token's output after the routed sum and its rescale
  /// (DeepSeek shared_experts, Qwen2-MoE shared_expert, Llama 4 shared_expert, LLaMA-MoE's
  /// residual experts). gate: empty, or d values w: the shared sum is multiplied by sigmoid(x·w)
  /// per token (Qwen2-MoE shared_expert_gate).
  void set_shared_experts(std::vector<FfnWeights<T>> shared, Vector gate = {}) {
    for (std::size_t i = 0; i < shared.size(); ++i)
      MOE_CHECK(shared[i].view().model_dim() == model_dim(), "MoELayer: shared expert "
                                                                 << i << " has d=" << shared[i].gate.rows()
                                                                 << ", the layer has d=" << model_dim());
    MOE_CHECK(gate.size() == 0 || gate.size() == model_dim(),
              "MoELayer: shared expert gate has " << gate.size() << " values, expected d=" << model_dim());
    MOE_CHECK(gate.size() == 0 || !shared.empty(), "MoELayer: shared expert gate without shared experts");
    shared_ = std::move(shared);
    shared_gate_ = std::move(gate);
  }

  int num_experts() const { return static_cast<int>(experts_.size()); }  ///< N
  int top_k() const { return config_.top_k; }                            ///< k
  /// Formula (6) for k selections: config.scale, or N/k when unset.
  double scale(int k) const { return config_.scale ? *config_.scale : default_scale(num_experts(), k); }
  double scale() const { return scale(config_.top_k); }
  Index model_dim() const { return experts_.front().model_dim(); }  ///< d
  const FfnWeightsView<W>& expert(int e) const { return experts_.at(static_cast<std::size_t>(e)); }
  const ColMatrix<T>& router_weight() const { return gate_.weight; }
  const RouterGate<T>& router() const { return gate_; }
  const std::vector<FfnWeights<T>>& shared_experts() const { return shared_; }
  const Vector& shared_expert_gate() const { return shared_gate_; }
  const MoEConfig& config() const { return config_; }

  /// x: T x d row-major; y: T x d row-major (written; must not alias x).
  void forward(const ConstRowRef<T>& x, RowRef<T> y, MoEWorkspace<T>& ws, ThreadPool* pool = nullptr,
               RoutingRecord<T>* record = nullptr) const {
    forward(x, config_.top_k, y, ws, pool, record);
  }
  /// The same with k selections for this call (1 <= k <= N); an unset scale is then N/k.
  void forward(const ConstRowRef<T>& x, int k, RowRef<T> y, MoEWorkspace<T>& ws, ThreadPool* pool = nullptr,
               RoutingRecord<T>* record = nullptr) const {
    MOE_CHECK(!gate_.empty(), "MoELayer::forward: this layer has no router weight; use forward_routed");
    MOE_CHECK(k >= 1 && k <= num_experts(),
              "MoELayer::forward: k=" << k << " must be in [1, N=" << num_experts() << "]");
    const Index tokens = x.rows();
    MOE_CHECK(x.cols() == model_dim(),
              "MoELayer::forward: x has " << x.cols() << " columns, the layer expects d=" << model_dim());
    ws.reserve(*this, tokens, k);
    Eigen::Map<RowMatrix<T>> logits(ws.logits_.data(), tokens, num_experts());
    Eigen::Map<IdMatrix> ids(ws.ids_.data(), tokens, k);
    Eigen::Map<RowMatrix<T>> weights(ws.weights_.data(), tokens, k);
    gate_logits<T>(gate_, config_.router, x, logits, ws.gate_scratch_);
    route<T>(config_.router, logits, gate_.selection_bias_data(), k, ids, weights, ws.router_scratch_,
             record ? &record->stats : nullptr);
    forward_routed(x, ids, weights, y, ws, pool, record);
  }

  /// The same forward on a backend: `backend.forward(*this, x, y)`. CpuBackend<T> (below) runs
  /// the CPU path above; cuda::DeviceMoELayer<W> (moe/cuda/moe_layer.cuh) runs it on a GPU, with
  /// this layer's router and experts uploaded once, a device workspace and a stream. Code written
  /// against this overload runs on either.
  template <class Backend>
  void forward(const ConstRowRef<T>& x, RowRef<T> y, Backend& backend) const {
    backend.forward(*this, x, y);
  }

  /// Expert computation for a routing made elsewhere (any router): ids, weights: T x k', k' <= N,
  /// ids in [0, N) or -1 (a dropped slot: contributes nothing), finite weights. Applies this
  /// layer's scale (N/k' when unset), input scaling and shared experts.
  void forward_routed(const ConstRowRef<T>& x, const Eigen::Ref<const IdMatrix>& ids,
                      const ConstRowRef<T>& weights, RowRef<T> y, MoEWorkspace<T>& ws,
                      ThreadPool* pool = nullptr, RoutingRecord<T>* record = nullptr) const {
    check_routing(x, ids, weights, y);
    ws.reserve(*this, x.rows(), ids.cols());
    detail::plan_experts<T>(
        ids, num_experts(), model_dim(), [&](int e) { return expert(e).hidden_dim(); }, ws.plan_);
    gather(x, weights, ws, pool);
    gate_up(ws, pool);
    down(ws, pool);
    combine(ids, weights, y, ws, pool);
    add_shared_experts(x, y, ws, pool);
    if (record) {
      record->expert_ids = ids;
      record->weights = weights;
      record->tokens_per_expert = ws.plan_.dispatch.counts;
    }
  }

 private:
  /// Throws moe::Error unless x, y and the routing (T x k' ids in [-1, N), finite weights) fit.
  void check_routing(const ConstRowRef<T>& x, const Eigen::Ref<const IdMatrix>& ids,
                     const ConstRowRef<T>& weights, const RowRef<T>& y) const {
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
  }

  /// Stage 1: each expert's token rows (times G(x)_i with scale_input) into its input scratch.
  void gather(const ConstRowRef<T>& x, const ConstRowRef<T>& weights, MoEWorkspace<T>& ws,
              ThreadPool* pool) const {
    const detail::ExpertPlan& plan = ws.plan_;
    const ExpertDispatch& dp = plan.dispatch;
    const Index d = model_dim(), k = weights.cols();
    const bool scale_input = config_.scale_input;
    parallel_for(pool, plan.gather_tasks, [&](Index i) {
      const detail::ExpertTask task = plan.gather_task(i);
      const int e = task.expert;
      const auto r0 = static_cast<std::size_t>(dp.offsets[static_cast<std::size_t>(e)]);
      detail::gather_scratch_rows<T>(
          plan.rows(e), d,
          [&](Index r) { return x.data() + dp.token[r0 + static_cast<std::size_t>(r)] * x.outerStride(); },
          [&](Index r) {
            const Index pair = dp.pair[r0 + static_cast<std::size_t>(r)];
            return scale_input ? weights(pair / k, pair % k) : T(1);
          },
          ws.scratch_.input(plan, e, d), task.part, task.part + 1,
          ws.scratch_.template packed<W>(plan, e, d, expert(e).hidden_dim()).x);
    });
  }

  /// Stage 2, formula (4)'s inner part: each expert's h = act(x·W_gate, x·W_up), by column blocks.
  void gate_up(MoEWorkspace<T>& ws, ThreadPool* pool) const {
    const detail::ExpertPlan& plan = ws.plan_;
    const Index d = model_dim();
    parallel_for(pool, plan.hidden_tasks, [&](Index i) {
      const detail::ExpertTask task = plan.hidden_task(i);
      const int e = task.expert;
      const Index m = expert(e).hidden_dim();
      const auto packed = ws.scratch_.template packed<W>(plan, e, d, m);
      ws.scratch_.with_expert(plan, e, d, m, [&](const auto& xe, auto& g, auto& h, auto&, const auto& blk) {
        detail::glu_hidden_block(expert(e), xe, g, h, task.part, config_.activation, packed.block(blk));
      });
    });
  }

  /// Stage 3: each expert's outputs h·W_down, by column blocks. An expert past kFewRows rows
  /// computes them column-major; its task also copies its block, still in cache, into token rows
  /// for the combine (ExpertScratch::output_row), which would otherwise read one value per cache
  /// line (bench/RESULTS.md, "combine").
  void down(MoEWorkspace<T>& ws, ThreadPool* pool) const {
    const detail::ExpertPlan& plan = ws.plan_;
    const Index d = model_dim(), ldr = detail::padded_row_stride(d);
    parallel_for(pool, plan.down_tasks, [&](Index i) {
      const detail::ExpertTask task = plan.down_task(i);
      const int e = task.expert;
      const Index m = expert(e).hidden_dim();
      const auto packed = ws.scratch_.template packed<W>(plan, e, d, m);
      ws.scratch_.with_expert(plan, e, d, m, [&](const auto&, auto&, auto& h, auto& ye, const auto& blk) {
        detail::down_proj_block(expert(e), h, ye, task.part, packed.block(blk));
        if (plan.rows(e) <= detail::kFewRows) return;
        const Index c0 = task.part * detail::kColumnBlock, width = std::min(detail::kColumnBlock, d - c0);
        T* dst = ws.scratch_.output_row(plan, e, blk.first, d) + c0;
        if constexpr (std::is_same_v<T, float>)
          detail::transpose_to_rows(ye.data() + c0 * ye.outerStride(), ye.outerStride(), blk.rows, width, dst,
                                    ldr);
        else
          Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>(dst, blk.rows, width, Eigen::OuterStride<>(ldr)) =
              ye.middleCols(c0, width);
      });
    });
  }

  /// Stage 4: per token, the sum over its slots in slot order (formula 2), then × scale (formula
  /// 6). Tokens are independent.
  void combine(const Eigen::Ref<const IdMatrix>& ids, const ConstRowRef<T>& weights, RowRef<T> y,
               MoEWorkspace<T>& ws, ThreadPool* pool) const {
    const detail::ExpertPlan& plan = ws.plan_;
    const Index tokens = ids.rows(), k = ids.cols(), d = model_dim();
    const T scale = static_cast<T>(this->scale(static_cast<int>(k)));
    const bool scale_input = config_.scale_input;
    constexpr Index kTokenChunk = 16;
    parallel_for(pool, (tokens + kTokenChunk - 1) / kTokenChunk, [&](Index c) {
      for (Index t = c * kTokenChunk; t < std::min(tokens, (c + 1) * kTokenChunk); ++t) {
        y.row(t).setZero();  // 0 + a == a exactly: the sum is still slot 0, then slot 1, ...
        for (Index s = 0; s < k; ++s) {
          if (ids(t, s) < 0) continue;  // dropped by the expert capacity
          const int e = ids(t, s);
          const Index local = plan.dispatch.row_of[static_cast<std::size_t>(t * k + s)] -
                              plan.dispatch.offsets[static_cast<std::size_t>(e)];
          const T* row = ws.scratch_.output_row(plan, e, local, d);
          const T w = scale_input ? T(1) : weights(t, s);
          if constexpr (std::is_same_v<T, float>)
            detail::add_scaled_row(y.row(t).data(), d, w, row);
          else
            y.row(t) += w * Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(row, d);
        }
        y.row(t) *= scale;
      }
    });
  }

  void add_shared_experts(const ConstRowRef<T>& x, RowRef<T> y, MoEWorkspace<T>& ws, ThreadPool* pool) const {
    const Index tokens = x.rows(), d = model_dim();
    if (shared_.empty() || tokens == 0) return;
    Eigen::Map<RowMatrix<T>> out(ws.shared_out_.data(), tokens, d);
    Eigen::Map<RowMatrix<T>> part(ws.shared_out_.data() + tokens * d, tokens, d);
    for (std::size_t i = 0; i < shared_.size(); ++i) {
      ffn_forward<T>(shared_[i].view(), x, i == 0 ? out : part, ws.shared_ws_, pool, config_.activation);
      if (i > 0) out += part;
    }
    if (shared_gate_.size()) {
      Eigen::Map<Vector> g(ws.shared_gate_.data(), tokens);
      g.noalias() = x * shared_gate_;
      for (Index t = 0; t < tokens; ++t) y.row(t) += sigmoid(g(t)) * out.row(t);
    } else {
      y += out;
    }
  }

  void validate() {
    MOE_CHECK(!experts_.empty(), "MoELayer: no experts (N = 0)");
    const Index d = experts_.front().model_dim();
    for (std::size_t e = 0; e < experts_.size(); ++e)
      MOE_CHECK(experts_[e].model_dim() == d,
                "MoELayer: expert " << e << " has d=" << experts_[e].model_dim() << ", expert 0 has d=" << d);
    gate_.validate(d, num_experts());
    config_.router.validate(num_experts(), config_.top_k);
    MOE_CHECK(!config_.scale || std::isfinite(*config_.scale),
              "MoELayer: scale " << *config_.scale << " is not finite");
  }

  std::vector<FfnWeights<W>> owned_;
  std::vector<FfnWeightsView<W>> experts_;
  RouterGate<T> gate_;
  MoEConfig config_;
  std::vector<FfnWeights<T>> shared_;
  Vector shared_gate_;
};

/// The CPU backend of MoELayer::forward(x, y, backend): a workspace and an optional thread pool
/// (not owned), used by every forward it runs.
template <class T>
class CpuBackend {
 public:
  explicit CpuBackend(ThreadPool* pool = nullptr) : pool_(pool) {}
  template <class W>
  void forward(const MoELayer<T, W>& layer, const ConstRowRef<T>& x, RowRef<T> y) {
    layer.forward(x, y, ws_, pool_);
  }
  MoEWorkspace<T>& workspace() { return ws_; }

 private:
  MoEWorkspace<T> ws_;
  ThreadPool* pool_;
};

template <class T>
template <class W>
void MoEWorkspace<T>::reserve(const MoELayer<T, W>& layer, Index tokens, Index k) {
  const int n = layer.num_experts();
  const Index d = layer.model_dim(), pairs = tokens * k;
  Index max_m = 0, blocks = 0;
  for (int e = 0; e < n; ++e) {
    max_m = std::max(max_m, layer.expert(e).hidden_dim());
    blocks += detail::num_column_blocks(layer.expert(e).hidden_dim()) + detail::num_column_blocks(d);
  }
  const auto u = [](Index v) { return static_cast<std::size_t>(v); };
  // Each expert's rows are padded to whole vectors (detail::scratch_rows): at most one vector
  // of padding per expert; gather tasks: at most rows / kGatherPanel + one partial panel per expert.
  const Index rows = pairs + n * detail::kPanelRowQuantum;
  grow(logits_, u(tokens * n));
  grow(ids_, u(pairs));
  grow(weights_, u(pairs));
  scratch_.template reserve<W>(rows, d, max_m);
  plan_.reserve(pairs, n, blocks + rows / detail::kGatherPanel + n);
  router_scratch_.reserve(n, static_cast<int>(k));
  const RouterGate<T>& gate = layer.router();
  if (gate.mlp_out.size()) grow(gate_scratch_.hidden, u(tokens * gate.weight.cols()));
  if (gate.noise.size()) grow(gate_scratch_.noise, u(tokens * n));
  if (!layer.shared_experts().empty()) {
    Index shared_m = 0;
    for (const auto& s : layer.shared_experts()) shared_m = std::max(shared_m, s.gate.cols());
    shared_ws_.reserve(tokens, d, shared_m);
    grow(shared_out_, u((layer.shared_experts().size() > 1 ? 2 : 1) * tokens * d));
    if (layer.shared_expert_gate().size()) grow(shared_gate_, u(tokens));
  }
}

}  // namespace moe
