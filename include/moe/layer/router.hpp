// moe — the top-k router: from logits z = x·W_r to each token's experts K(x) and weights G(x)
// (paper formula (2)), with the switches that distinguish real MoE families (scores, selection
// bias, group-limited selection, renormalisation, scaling, expert capacity).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/math.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/routing_stats.hpp"

namespace moe {

/// How the k selected weights are formed from the softmax over all N experts.
enum class TopKWeights {
  kSoftmax,       ///< LLaMA-MoE reference: p_i of the softmax over all N, not renormalised
  kRenormalized,  ///< Mixtral: p_i / sum_{j in K} p_j, the k weights sum to 1
};

/// The routing of T tokens: for token t, slot s, expert ids(t, s) with weight weights(t, s).
/// Slots are ordered best first.
template <class T>
struct TopKRouting {
  IdMatrix ids;          ///< T x k, expert index in [0, N)
  RowMatrix<T> weights;  ///< T x k, G(x)_i of formula (2)
  Index tokens() const { return ids.rows(); }
  int k() const { return static_cast<int>(ids.cols()); }
};

/// Router logits z = x·W_r. x: T x d row-major; w_router: d x N (column-major, i.e. HF
/// gate.weight [N, d] as stored); logits: T x N row-major (written).
template <class T>
void router_logits(const ConstRowRef<T>& x, const Eigen::Ref<const ColMatrix<T>>& w_router,
                   RowRef<T> logits) {
  MOE_CHECK(x.cols() == w_router.rows(),
            "router_logits: x has " << x.cols() << " columns, router weight expects d=" << w_router.rows());
  MOE_CHECK(logits.rows() == x.rows() && logits.cols() == w_router.cols(),
            "router_logits: logits is " << logits.rows() << "x" << logits.cols() << ", expected " << x.rows()
                                        << "x" << w_router.cols());
  logits.noalias() = x * w_router;
}

/// Score function s(z) applied to router logits.
enum class ScoreFunction {
  kSoftmax,       ///< softmax over all N (or over the k selected, see RouterOptions::score_selected_only)
  kSigmoid,       ///< sigmoid per expert (DeepSeek-V3, Llama 4)
  kSqrtSoftplus,  ///< sqrt(softplus(z)) per expert
  kNone,          ///< the logits themselves
};
/// What top-k compares.
enum class SelectOn {
  kScores,  ///< s(z) (+ selection bias): HF Mixtral/Qwen/DeepSeek take top-k of the scores
  kLogits,  ///< z (+ selection bias): same order as softmax scores without their rounding ties
};
/// How a group's score is formed in group-limited selection.
enum class GroupScore {
  kMax,      ///< DeepSeek-V2 group_limited_greedy
  kTop2Sum,  ///< DeepSeek-V3 noaux_tc: sum of the group's two best selection values
};
/// Renormalisation of the k selected weights.
enum class Renormalize {
  kNone,
  kL1,     ///< w / (sum w + eps)
  kPNorm,  ///< w / (sum |w|^p)^(1/p)   (DBRX moe_normalize_expert_weights)
};

/// The switches of a router (presets.hpp names the settings of each real family). Per token,
/// with logits z (N values):
///   1. scores s = score(z) over all N (skipped when score_selected_only);
///   2. selection values v = (select == kScores && !score_selected_only ? s : z) + selection bias;
///   3. if n_group > 1: group score per group of N/n_group consecutive experts (max, or sum of the
///      top 2 of v), keep the topk_group best groups, exclude the other experts;
///   4. K = the k best v, ties to the lower expert index, slots best first;
///   5. weights w_i = s_i (the unbiased score) — or, when score_selected_only, the score function
///      over the k selected logits only (softmax over the k; sigmoid of each);
///   6. renormalise (kL1: w / (sum w + renorm_epsilon); kPNorm: w / ||w||_p);
///   7. w *= routed_scaling_factor;
///   8. with capacity_factor: each expert keeps at most ceil(capacity_factor · T / N) (token, slot)
///      pairs, first come by token order then slot; the others are dropped (id -1, weight 0).
struct RouterOptions {
  ScoreFunction score = ScoreFunction::kSoftmax;
  SelectOn select = SelectOn::kScores;
  bool score_selected_only = false;  ///< top-k of the logits, then score over the k (GPT-OSS, Llama 4)
  int n_group = 1;                   ///< group-limited selection when > 1 (N divisible by n_group)
  int topk_group = 1;                ///< groups kept, 1 <= topk_group <= n_group
  GroupScore group_score = GroupScore::kMax;
  Renormalize renormalize = Renormalize::kNone;
  double renorm_epsilon = 0.0;            ///< kL1 denominator epsilon (DeepSeek: 1e-20)
  double renorm_p = 1.0;                  ///< kPNorm exponent
  double routed_scaling_factor = 1.0;     ///< multiplies the weights (DeepSeek routed_scaling_factor)
  std::optional<double> capacity_factor;  ///< Switch: expert capacity ceil(cf · T / N)
  // LLaMA-MoE's noisy gate in training mode (applied by gate_logits in router_gate.hpp):
  // z += normal() · (softplus(x·W_noise) + noise_epsilon), drawn from SplitMix64(noise_seed).
  bool noisy_gate = false;
  double noise_epsilon = 0.01;
  std::uint64_t noise_seed = 0;

  /// The LLaMA-MoE gate of formula (2): softmax over all N, top-k compared on the logits (the same
  /// order as the softmax, without its rounding ties), weights p_i as they are (kSoftmax) or
  /// renormalised over the k with no epsilon (kRenormalized).
  static RouterOptions top_k_softmax(TopKWeights w) {
    RouterOptions r;
    r.select = SelectOn::kLogits;
    r.renormalize = w == TopKWeights::kRenormalized ? Renormalize::kL1 : Renormalize::kNone;
    return r;
  }

  /// Throws moe::Error naming the first inconsistent switch for N experts and k selections.
  void validate(int num_experts, int k) const {
    MOE_CHECK(num_experts >= 1, "router: no experts (N = " << num_experts << ")");
    MOE_CHECK(k >= 1 && k <= num_experts, "router: k=" << k << " must be in [1, N=" << num_experts << "]");
    MOE_CHECK(n_group >= 1 && num_experts % n_group == 0,
              "router: n_group=" << n_group << " must be >= 1 and divide N=" << num_experts);
    if (n_group > 1) {
      const int size = num_experts / n_group;
      MOE_CHECK(topk_group >= 1 && topk_group <= n_group,
                "router: topk_group=" << topk_group << " must be in [1, n_group=" << n_group << "]");
      MOE_CHECK(k <= topk_group * size, "router: k=" << k << " exceeds the " << topk_group * size
                                                     << " experts in the topk_group=" << topk_group
                                                     << " kept groups of " << size);
      MOE_CHECK(
          group_score != GroupScore::kTop2Sum || size >= 2,
          "router: group score 'sum of top 2' needs at least 2 experts per group, groups have " << size);
    }
    MOE_CHECK(std::isfinite(renorm_epsilon) && renorm_epsilon >= 0,
              "router: renorm_epsilon " << renorm_epsilon << " must be finite and >= 0");
    MOE_CHECK(std::isfinite(renorm_p) && renorm_p > 0, "router: renorm_p " << renorm_p << " must be > 0");
    MOE_CHECK(std::isfinite(routed_scaling_factor),
              "router: routed_scaling_factor " << routed_scaling_factor << " is not finite");
    MOE_CHECK(!capacity_factor || (std::isfinite(*capacity_factor) && *capacity_factor > 0),
              "router: capacity_factor " << *capacity_factor << " must be finite and > 0");
    MOE_CHECK(std::isfinite(noise_epsilon) && noise_epsilon >= 0,
              "router: noise_epsilon " << noise_epsilon << " must be finite and >= 0");
  }
};

/// Per-call scratch for route(): grows on first use, then route() allocates nothing.
template <class T>
struct RouterScratch {
  std::vector<T> values;      ///< scores, selection values, group scores
  std::vector<int> ints;      ///< group ids, capacity fill levels
  std::vector<Index> chosen;  ///< per-expert counts before capacity (statistics)
  void reserve(int num_experts, int k) {
    const auto n = static_cast<std::size_t>(num_experts);
    if (values.size() < 3 * n + static_cast<std::size_t>(k))
      values.resize(3 * n + static_cast<std::size_t>(k));
    if (ints.size() < n) ints.resize(n);
    if (chosen.size() < n) chosen.resize(n);
  }
};

namespace detail {

template <class T>
T score_one(ScoreFunction f, T z) {
  switch (f) {
    case ScoreFunction::kSigmoid:
      return sigmoid(z);
    case ScoreFunction::kSqrtSoftplus:
      // softplus(z) = max(z, 0) + log1p(exp(-|z|)): no overflow for large |z|.
      return std::sqrt(std::max(z, T(0)) + std::log1p(std::exp(-std::abs(z))));
    case ScoreFunction::kNone:
    case ScoreFunction::kSoftmax:  // not per element; handled by the caller
      break;
  }
  return z;
}

/// out = score(z) over n values (softmax over the n, the others per value). `out` may alias `z`.
template <class T>
void apply_score(ScoreFunction f, const T* z, int n, T* out) {
  if (f == ScoreFunction::kSoftmax) {
    softmax(z, n, out);
  } else {
    for (int e = 0; e < n; ++e) out[e] = score_one(f, z[e]);
  }
}

}  // namespace detail

namespace detail {

/// Step 4, group-limited selection: scores the n_group groups of sel (their max, or the sum of
/// their top 2), keeps the topk_group best and excludes every expert outside them (-inf, as the
/// official DeepSeek code masks). group: room for 2·n_group values; kept: n_group ints.
template <class T>
void keep_best_groups(const RouterOptions& opt, int n, T* sel, T* group, int* kept) {
  const int group_size = n / opt.n_group;
  for (int g = 0; g < opt.n_group; ++g) {
    const T* v = sel + g * group_size;
    if (opt.group_score == GroupScore::kMax) {
      group[g] = *std::max_element(v, v + group_size);
    } else {
      T best2[2];
      int unused[2];
      top_k(v, group_size, 2, unused, best2);
      group[g] = best2[0] + best2[1];
    }
  }
  T* kept_val = group + opt.n_group;
  top_k(group, opt.n_group, opt.topk_group, kept, kept_val);
  for (int g = 0; g < opt.n_group; ++g) {
    if (std::find(kept, kept + opt.topk_group, g) != kept + opt.topk_group) continue;
    std::fill(sel + g * group_size, sel + (g + 1) * group_size, -std::numeric_limits<T>::infinity());
  }
}

/// Steps 6–7 on one token's k weights: renormalise (L1 + epsilon, or p-norm), then scale.
template <class T>
void normalize_weights(const RouterOptions& opt, int k, T* w) {
  if (opt.renormalize == Renormalize::kL1) {
    T sum = T(0);
    for (int s = 0; s < k; ++s) sum += w[s];
    sum += static_cast<T>(opt.renorm_epsilon);
    for (int s = 0; s < k; ++s) w[s] /= sum;
  } else if (opt.renormalize == Renormalize::kPNorm) {
    const T p = static_cast<T>(opt.renorm_p);
    T acc = T(0);
    for (int s = 0; s < k; ++s) acc += std::pow(std::abs(w[s]), p);
    const T norm = opt.renorm_p == 1.0 ? acc : std::pow(acc, T(1) / p);
    for (int s = 0; s < k; ++s) w[s] /= norm;
  }
  if (opt.routed_scaling_factor != 1.0)
    for (int s = 0; s < k; ++s) w[s] *= static_cast<T>(opt.routed_scaling_factor);
}

/// Steps 1–7 for token t: logits z (n values) → its k experts id (best first) and weights w.
template <class T>
void route_token(const RouterOptions& opt, Index t, const T* z, const T* selection_bias, int n, int k,
                 std::int32_t* id, T* w, RouterScratch<T>& scratch) {
  for (int e = 0; e < n; ++e)
    MOE_CHECK(std::isfinite(z[e]),
              "route: router logit for token " << t << ", expert " << e << " is " << z[e]);
  T* score = scratch.values.data();
  T* sel = score + n;
  const bool scores_first = !opt.score_selected_only;
  if (scores_first) apply_score(opt.score, z, n, score);
  const T* base = (scores_first && opt.select == SelectOn::kScores) ? score : z;
  for (int e = 0; e < n; ++e) sel[e] = selection_bias ? base[e] + selection_bias[e] : base[e];
  if (opt.n_group > 1) keep_best_groups(opt, n, sel, sel + n, scratch.ints.data());
  top_k(sel, n, k, id, w);
  if (scores_first) {
    for (int s = 0; s < k; ++s) w[s] = score[id[s]];
  } else {
    for (int s = 0; s < k; ++s) w[s] = z[id[s]];
    apply_score(opt.score, w, k, w);
  }
  normalize_weights(opt, k, w);
}

/// Step 8, expert capacity: in token order, each expert keeps at most ceil(cf · T / N) slots; the
/// rest get id -1 and weight 0. Returns the slots dropped. fill: n ints.
template <class T>
Index apply_capacity(double capacity_factor, int n, Eigen::Ref<IdMatrix> ids, RowRef<T> weights, int* fill) {
  const Index tokens = ids.rows(), k = ids.cols();
  const auto capacity =
      static_cast<Index>(std::ceil(capacity_factor * static_cast<double>(tokens) / static_cast<double>(n)));
  std::fill(fill, fill + n, 0);
  Index dropped = 0;
  for (Index t = 0; t < tokens; ++t)
    for (Index s = 0; s < k; ++s) {
      if (fill[ids(t, s)] < capacity) {
        ++fill[ids(t, s)];
      } else {
        ids(t, s) = -1;
        weights(t, s) = T(0);
        ++dropped;
      }
    }
  return dropped;
}

}  // namespace detail

/// The general router, steps 1–8 of RouterOptions, over T tokens.
/// logits: T x N row-major; selection_bias: N values or nullptr (DeepSeek-V3
/// e_score_correction_bias: changes which experts are chosen, never their weights);
/// ids, weights: T x k (written, slots best first; capacity drops leave id -1 and weight 0).
/// stats (optional, computed only when given): see routing_stats.hpp.
/// Throws moe::Error for bad options, shapes, or a NaN/Inf logit or bias (naming token and expert).
template <class T>
void route(const RouterOptions& opt, const ConstRowRef<T>& logits, const T* selection_bias, int k,
           Eigen::Ref<IdMatrix> ids, RowRef<T> weights, RouterScratch<T>& scratch,
           RoutingStats* stats = nullptr) {
  const Index tokens = logits.rows();
  const int n = static_cast<int>(logits.cols());
  opt.validate(n, k);
  MOE_CHECK(ids.rows() == tokens && ids.cols() == k && weights.rows() == tokens && weights.cols() == k,
            "route: outputs are ids " << ids.rows() << "x" << ids.cols() << " and weights " << weights.rows()
                                      << "x" << weights.cols() << ", expected " << tokens << "x" << k);
  if (selection_bias)
    for (int e = 0; e < n; ++e)
      MOE_CHECK(std::isfinite(selection_bias[e]),
                "route: selection bias of expert " << e << " is " << selection_bias[e]);
  scratch.reserve(n, k);
  for (Index t = 0; t < tokens; ++t)
    detail::route_token(opt, t, logits.row(t).data(), selection_bias, n, k, ids.row(t).data(),
                        weights.row(t).data(), scratch);
  // Statistics see the router's choice before any capacity drop (Switch's f_i).
  if (stats) {
    std::fill(scratch.chosen.begin(), scratch.chosen.begin() + n, Index{0});
    for (Index t = 0; t < tokens; ++t)
      for (int s = 0; s < k; ++s) ++scratch.chosen[static_cast<std::size_t>(ids(t, s))];
  }
  const Index dropped = opt.capacity_factor ? detail::apply_capacity<T>(*opt.capacity_factor, n, ids, weights,
                                                                        scratch.ints.data())
                                            : 0;
  if (stats) compute_routing_stats<T>(logits, ids, weights, scratch.chosen.data(), dropped, *stats);
}

/// Convenience overload: allocates its scratch and returns a new TopKRouting.
template <class T>
TopKRouting<T> route(const RouterOptions& opt, const ConstRowRef<T>& logits, int k,
                     const T* selection_bias = nullptr, RoutingStats* stats = nullptr) {
  opt.validate(static_cast<int>(logits.cols()), k);
  TopKRouting<T> r{IdMatrix(logits.rows(), k), RowMatrix<T>(logits.rows(), k)};
  RouterScratch<T> scratch;
  route<T>(opt, logits, selection_bias, k, r.ids, r.weights, scratch, stats);
  return r;
}

/// Top-k gate, paper formula (2): p = softmax(z) over all N; K = top-k(p); G_i = p_i (kSoftmax)
/// or p_i / sum_{j in K} p_j (kRenormalized) — route() with RouterOptions::top_k_softmax(mode).
/// logits: T x N row-major; ids: T x k; weights: T x k (both written, slots best first); equal
/// logits go to the lower expert index. Allocates its scratch (N + k values); MoELayer routes
/// through its workspace instead. Throws moe::Error for k < 1, k > N, shape mismatches, or a
/// NaN/Inf logit (naming the token and expert).
template <class T>
void route_top_k(const ConstRowRef<T>& logits, int k, TopKWeights mode, Eigen::Ref<IdMatrix> ids,
                 RowRef<T> weights) {
  RouterScratch<T> scratch;
  route<T>(RouterOptions::top_k_softmax(mode), logits, nullptr, k, ids, weights, scratch);
}

/// Convenience overload returning a new TopKRouting (allocates).
template <class T>
TopKRouting<T> route_top_k(const ConstRowRef<T>& logits, int k, TopKWeights mode) {
  return route<T>(RouterOptions::top_k_softmax(mode), logits, k);
}

}  // namespace moe
