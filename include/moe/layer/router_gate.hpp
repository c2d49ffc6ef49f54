// moe — the router's weights and its logits z(x): a linear gate x·W_r (+ bias), or LLaMA-MoE's
// MLP gate tanh(x·W_1)·W_2 with its training-time noise.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/detail/rng.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/router.hpp"

namespace moe {

/// Router weights, math orientation, column-major (each the bytes of the HF [out, in] tensor).
/// Empty members are absent.
template <class T>
struct RouterGate {
  using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  ColMatrix<T> weight;    ///< d x N: gate.weight / router.weight; LLaMA-MoE gate_network.0 (d x N)
  Vector bias;            ///< N: router bias (GPT-OSS router.bias)
  Vector selection_bias;  ///< N: DeepSeek-V3 e_score_correction_bias (selection only)
  ColMatrix<T> mlp_out;   ///< N x N: LLaMA-MoE gate_network.2; if set, z = tanh(x·weight)·mlp_out
  ColMatrix<T> noise;     ///< d x N: LLaMA-MoE weight_noise (used when RouterOptions::noisy_gate)

  RouterGate() = default;
  /// The plain linear gate z = x·W_r.
  explicit RouterGate(ColMatrix<T> w) : weight(std::move(w)) {}

  bool empty() const { return weight.size() == 0; }
  Index model_dim() const { return weight.rows(); }
  int num_experts() const { return static_cast<int>(mlp_out.size() ? mlp_out.cols() : weight.cols()); }

  /// Throws moe::Error unless every present member fits d and N.
  void validate(Index d, int n) const {
    if (empty()) return;
    if (mlp_out.size() == 0) {
      MOE_CHECK(weight.rows() == d && weight.cols() == n, "router weight is "
                                                              << weight.rows() << "x" << weight.cols()
                                                              << ", expected d x N = " << d << "x" << n);
    } else {
      MOE_CHECK(weight.rows() == d && mlp_out.rows() == weight.cols() && mlp_out.cols() == n,
                "router MLP weights are " << weight.rows() << "x" << weight.cols() << " and "
                                          << mlp_out.rows() << "x" << mlp_out.cols()
                                          << ", expected d x h and h x N with d=" << d << " N=" << n);
    }
    MOE_CHECK(bias.size() == 0 || bias.size() == n,
              "router: bias has " << bias.size() << " values, expected " << n);
    MOE_CHECK(selection_bias.size() == 0 || selection_bias.size() == n,
              "router: selection bias has " << selection_bias.size() << " values, expected " << n);
    MOE_CHECK(
        noise.size() == 0 || (noise.rows() == d && noise.cols() == n),
        "router: noise weight is " << noise.rows() << "x" << noise.cols() << ", expected " << d << "x" << n);
  }
  const T* selection_bias_data() const { return selection_bias.size() ? selection_bias.data() : nullptr; }
};

/// Scratch for gate_logits (the MLP gate's hidden layer, the noise logits). Grows once.
template <class T>
struct GateScratch {
  std::vector<T> hidden, noise;
};

/// z = x·W_r (+ bias); MLP gate: z = tanh(x·W_1)·W_2; with opt.noisy_gate (LLaMA-MoE training):
/// z += n · (softplus(x·W_noise) + noise_epsilon), n ~ N(0, 1) drawn token by token, expert by
/// expert from SplitMix64(noise_seed). x: T x d; logits: T x N (written).
template <class T>
void gate_logits(const RouterGate<T>& gate, const RouterOptions& opt, const ConstRowRef<T>& x,
                 RowRef<T> logits, GateScratch<T>& scratch) {
  MOE_CHECK(!gate.empty(), "router: no router weight (use forward_routed for external routings)");
  const Index tokens = x.rows();
  const int n = gate.num_experts();
  MOE_CHECK(x.cols() == gate.model_dim(),
            "router: x has " << x.cols() << " columns, router weight expects d=" << gate.model_dim());
  MOE_CHECK(logits.rows() == tokens && logits.cols() == n, "router: logits is "
                                                               << logits.rows() << "x" << logits.cols()
                                                               << ", expected " << tokens << "x" << n);
  if (gate.mlp_out.size()) {
    const auto hid = static_cast<std::size_t>(tokens * gate.weight.cols());
    if (scratch.hidden.size() < hid) scratch.hidden.resize(hid);
    Eigen::Map<RowMatrix<T>> h(scratch.hidden.data(), tokens, gate.weight.cols());
    h.noalias() = x * gate.weight;
    h = h.array().tanh();
    logits.noalias() = h * gate.mlp_out;
  } else {
    logits.noalias() = x * gate.weight;
  }
  if (gate.bias.size()) logits.rowwise() += gate.bias.transpose();
  if (opt.noisy_gate) {
    MOE_CHECK(gate.noise.size(), "router: noisy gate requested but the router has no noise weight");
    const auto nn = static_cast<std::size_t>(tokens * n);
    if (scratch.noise.size() < nn) scratch.noise.resize(nn);
    Eigen::Map<RowMatrix<T>> zn(scratch.noise.data(), tokens, n);
    zn.noalias() = x * gate.noise;
    detail::SplitMix64 rng(opt.noise_seed);
    const T eps = static_cast<T>(opt.noise_epsilon);
    for (Index t = 0; t < tokens; ++t)
      for (int e = 0; e < n; ++e) {
        const T v = zn(t, e);
        const T softplus = std::max(v, T(0)) + std::log1p(std::exp(-std::abs(v)));
        logits(t, e) += static_cast<T>(rng.normal()) * (softplus + eps);
      }
  }
}

}  // namespace moe
