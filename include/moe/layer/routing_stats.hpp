// moe — statistics of one routing: load, importance, their CV² (LLaMA-MoE's balance loss), the
// Switch auxiliary loss, the router z-loss, routing entropy and capacity drops.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// What route() measured (opt-in: pass a pointer; nothing is computed otherwise). Sums in double.
struct RoutingStats {
  Index tokens = 0;                      ///< T
  std::vector<Index> tokens_per_expert;  ///< N: (token, slot) pairs each expert computes (after drops)
  std::vector<double> importance;        ///< N: sum of the combine weights each expert received
  double cv2_tokens = 0;                 ///< CV² of tokens_per_expert
  double cv2_importance = 0;             ///< CV² of importance; LLaMA-MoE's balance loss is
                                         ///< 0.01 · (cv2_importance + cv2_tokens)
  double aux_loss = 0;  ///< Switch: N · sum_i f_i · P_i, f_i = pairs the router chose for expert i
                        ///< (before capacity) / T, P_i = mean over tokens of softmax(z)_i over all N
  double z_loss = 0;    ///< mean over tokens of logsumexp(z)²
  double entropy = 0;   ///< mean over tokens of -sum_i p_i ln p_i, p = softmax(z) over all N (nats)
  Index dropped = 0;    ///< (token, slot) pairs dropped by the expert capacity
};

/// Squared coefficient of variation as LLaMA-MoE computes it: unbiased variance / (mean² + 1e-10),
/// 0 for a single value.
inline double cv_squared(const std::vector<double>& v) {
  const auto n = v.size();
  if (n < 2) return 0.0;
  double mean = 0;
  for (double x : v) mean += x;
  mean /= static_cast<double>(n);
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  var /= static_cast<double>(n - 1);
  return var / (mean * mean + 1e-10);
}

/// Fills `out` from logits (T x N), the final routing (ids, weights: T x k; id -1 = dropped) and
/// the per-expert counts of the router's choice before capacity (`chosen`, N values).
template <class T>
void compute_routing_stats(const ConstRowRef<T>& logits, const Eigen::Ref<const IdMatrix>& ids,
                           const ConstRowRef<T>& weights, const Index* chosen, Index dropped,
                           RoutingStats& out) {
  const Index tokens = logits.rows(), k = ids.cols();
  const int n = static_cast<int>(logits.cols());
  const auto un = static_cast<std::size_t>(n);
  out.tokens = tokens;
  out.dropped = dropped;
  out.tokens_per_expert.assign(un, 0);
  out.importance.assign(un, 0.0);
  std::vector<double> prob_mean(un, 0.0);
  double z_loss = 0, entropy = 0;
  for (Index t = 0; t < tokens; ++t) {
    for (Index s = 0; s < k; ++s) {
      const auto e = ids(t, s);
      if (e < 0) continue;
      ++out.tokens_per_expert[static_cast<std::size_t>(e)];
      out.importance[static_cast<std::size_t>(e)] += static_cast<double>(weights(t, s));
    }
    double zmax = static_cast<double>(logits(t, 0));
    for (int e = 1; e < n; ++e) zmax = std::max(zmax, static_cast<double>(logits(t, e)));
    double sum = 0;
    for (int e = 0; e < n; ++e) sum += std::exp(static_cast<double>(logits(t, e)) - zmax);
    const double lse = zmax + std::log(sum);
    z_loss += lse * lse;
    for (int e = 0; e < n; ++e) {
      const double logp = static_cast<double>(logits(t, e)) - lse;
      const double p = std::exp(logp);
      prob_mean[static_cast<std::size_t>(e)] += p;
      entropy -= p * logp;
    }
  }
  std::vector<double> load(un);
  double aux = 0;
  for (std::size_t e = 0; e < un; ++e) {
    load[e] = static_cast<double>(out.tokens_per_expert[e]);
    if (tokens > 0) aux += (static_cast<double>(chosen[e]) / tokens) * (prob_mean[e] / tokens);
  }
  out.cv2_tokens = cv_squared(load);
  out.cv2_importance = cv_squared(out.importance);
  out.aux_loss = n * aux;
  out.z_loss = tokens > 0 ? z_loss / tokens : 0.0;
  out.entropy = tokens > 0 ? entropy / tokens : 0.0;
}

}  // namespace moe
