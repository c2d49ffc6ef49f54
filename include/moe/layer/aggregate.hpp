// moe — weighted top-k aggregation, paper formula (2), and the output rescale, formula (6).
#pragma once

#include <cmath>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// The default output rescale of paper formula (6): N / k. LLaMA-MoE's code also allows any
/// scalar (per layer); pass that to the layer instead where a checkpoint sets one.
inline double default_scale(int num_experts, int top_k) {
  MOE_CHECK(num_experts >= 1 && top_k >= 1 && top_k <= num_experts,
            "default_scale: need 1 <= k <= N, got N=" << num_experts << " k=" << top_k);
  return static_cast<double>(num_experts) / static_cast<double>(top_k);
}

/// Weighted top-k aggregation, paper formula (2): y_t = sum_s weights(t,s) · E_{ids(t,s)}(x_t),
/// summed in slot order. expert_outputs holds every expert's output for every token (what the
/// NumPy reference computes): T x (N·d) row-major, expert e of token t at columns [e·d, (e+1)·d).
/// ids, weights: T x k; y: T x d (written).
template <class T>
void aggregate_top_k(const ConstRowRef<T>& expert_outputs, const Eigen::Ref<const IdMatrix>& ids,
                     const ConstRowRef<T>& weights, RowRef<T> y) {
  const Index tokens = y.rows(), d = y.cols(), k = ids.cols();
  MOE_CHECK(d > 0 && expert_outputs.cols() % d == 0 && expert_outputs.rows() == tokens,
            "aggregate_top_k: expert_outputs is " << expert_outputs.rows() << "x" << expert_outputs.cols()
                                                  << ", expected " << tokens << " x (N·" << d << ")");
  MOE_CHECK(ids.rows() == tokens && weights.rows() == tokens && weights.cols() == k,
            "aggregate_top_k: ids " << ids.rows() << "x" << k << " and weights " << weights.rows() << "x"
                                    << weights.cols() << " must both be " << tokens << "xk");
  const Index n = expert_outputs.cols() / d;
  for (Index t = 0; t < tokens; ++t) {
    y.row(t).setZero();
    for (Index s = 0; s < k; ++s) {
      const Index e = ids(t, s);
      MOE_CHECK(e >= 0 && e < n, "aggregate_top_k: token " << t << " slot " << s << " names expert " << e
                                                           << ", outside [0, " << n << ")");
      y.row(t) += weights(t, s) * expert_outputs.row(t).segment(e * d, d);
    }
  }
}

/// Output rescale, paper formula (6): y *= scale (default_scale(N, k) = N/k unless the model
/// sets its own).
template <class T>
void apply_scale(RowRef<T> y, double scale) {
  MOE_CHECK(std::isfinite(scale), "apply_scale: scale " << scale << " is not finite");
  y *= static_cast<T>(scale);
}

}  // namespace moe
