// moe — routers for freshly sliced experts, before any training, and how to judge them: the
// oracle top-k recall against each expert's activation mass.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Cholesky>

#include "moe/construction/partition.hpp"
#include "moe/core/config.hpp"
#include "moe/core/detail/rng.hpp"
#include "moe/core/math.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/ffn.hpp"
#include "moe/layer/router_gate.hpp"

namespace moe {

/// Expert activation mass: mass(t, j) = Σ_{i∈S_j} |h_ti|, how much of token t's hidden activation
/// expert j holds — the oracle a router for sliced experts should follow. h: T x d_h.
template <class T>
RowMatrix<double> expert_activation_mass(const ConstRowRef<T>& h, const ExpertPartition& partition) {
  MOE_CHECK(
      h.cols() == partition.hidden_dim(),
      "expert_activation_mass: h has d_h=" << h.cols() << ", partition is over " << partition.hidden_dim());
  RowMatrix<double> mass = RowMatrix<double>::Zero(h.rows(), partition.num_experts());
  for (int j = 0; j < partition.num_experts(); ++j)
    for (const std::int32_t i : partition.expert(j))
      mass.col(j) += h.col(i).template cast<double>().cwiseAbs();
  return mass;
}

/// Oracle top-k recall: the mean over tokens of |router's top k ∩ oracle's top k| / k, both top-k
/// sets by value with ties to the lower expert (router: its logits, the order every score function
/// here keeps; oracle: expert_activation_mass). 1 means the router always picks the experts that
/// hold the most activation; a random router scores k/N on average.
template <class A, class B>
double oracle_top_k_recall(const Eigen::MatrixBase<A>& router_logits, const Eigen::MatrixBase<B>& mass,
                           int k) {
  MOE_CHECK(router_logits.rows() == mass.rows() && router_logits.cols() == mass.cols(),
            "oracle_top_k_recall: logits are " << router_logits.rows() << "x" << router_logits.cols()
                                               << ", mass is " << mass.rows() << "x" << mass.cols());
  const auto n = static_cast<int>(mass.cols());
  MOE_CHECK(k > 0 && k <= n, "oracle_top_k_recall: k=" << k << " must be in [1, N=" << n << "]");
  MOE_CHECK(mass.rows() > 0, "oracle_top_k_recall: no tokens");
  std::vector<double> z(static_cast<std::size_t>(n)), m(static_cast<std::size_t>(n));
  std::vector<std::int32_t> picked(static_cast<std::size_t>(k)), oracle(static_cast<std::size_t>(k));
  std::vector<double> scratch_w(static_cast<std::size_t>(k));
  double hits = 0;
  for (Index t = 0; t < mass.rows(); ++t) {
    for (int j = 0; j < n; ++j) {
      z[static_cast<std::size_t>(j)] = static_cast<double>(router_logits(t, j));
      m[static_cast<std::size_t>(j)] = static_cast<double>(mass(t, j));
    }
    top_k(z.data(), n, k, picked.data(), scratch_w.data());
    top_k(m.data(), n, k, oracle.data(), scratch_w.data());
    for (const std::int32_t e : picked) hits += std::count(oracle.begin(), oracle.end(), e);
  }
  return hits / (static_cast<double>(k) * static_cast<double>(mass.rows()));
}

/// LLaMA-MoE's starting router: the MLP gate tanh(x·W_1)·W_2 (W_1: d x N, W_2: N x N) with
/// PyTorch's default Linear initialisation, U(−1/√fan_in, 1/√fan_in), drawn from SplitMix64(seed)
/// in HF storage order ([out, in] row-major). The training-noise weight is zero, as LLaMA-MoE's
/// converter writes it.
inline RouterGate<float> random_router(Index model_dim, int num_experts, std::uint64_t seed) {
  MOE_CHECK(model_dim > 0 && num_experts > 0,
            "random_router: d and N must be positive, got d=" << model_dim << " N=" << num_experts);
  detail::SplitMix64 rng(seed);
  auto uniform = [&rng](Index in, Index out) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    ColMatrix<float> w(in, out);  // column o = row o of the [out, in] tensor
    for (Index o = 0; o < out; ++o)
      for (Index i = 0; i < in; ++i) w(i, o) = static_cast<float>((2.0 * rng.uniform() - 1.0) * bound);
    return w;
  };
  RouterGate<float> gate(uniform(model_dim, num_experts));
  gate.mlp_out = uniform(num_experts, num_experts);
  gate.noise = ColMatrix<float>::Zero(model_dim, num_experts);
  return gate;
}

/// Centroid router (MoEfication): column j of the linear gate W_r (d x N) is the mean of expert
/// j's L2-normalised W_up columns, so x·W_r scores how well x aligns with the expert's up rows.
template <class T>
ColMatrix<float> centroid_router(const Eigen::Ref<const ColMatrix<T>>& w_up,
                                 const ExpertPartition& partition) {
  MOE_CHECK(
      w_up.cols() == partition.hidden_dim(),
      "centroid_router: W_up has d_h=" << w_up.cols() << ", partition is over " << partition.hidden_dim());
  ColMatrix<double> w = ColMatrix<double>::Zero(w_up.rows(), partition.num_experts());
  for (int j = 0; j < partition.num_experts(); ++j) {
    for (const std::int32_t i : partition.expert(j)) {
      const Eigen::VectorXd col = w_up.col(i).template cast<double>();
      const double norm = col.norm();
      if (norm > 0) w.col(j) += col / norm;
    }
    w.col(j) /= static_cast<double>(partition.expert_size(j));
  }
  return w.cast<float>();
}

/// Least-squares router: the linear gate W_r (d x N) minimising ||X·W_r − M||² + λ||W_r||², M the
/// expert activation mass of the calibration tokens X (T x d), λ = ridge · trace(XᵀX)/d (a small
/// ridge keeps the normal equations well posed when T is not much larger than d). Solved in double
/// by LDLᵀ.
template <class T>
ColMatrix<float> fit_router(const ConstRowRef<T>& x, const Eigen::Ref<const RowMatrix<double>>& mass,
                            double ridge = 1e-3) {
  MOE_CHECK(x.rows() == mass.rows() && x.rows() > 0,
            "fit_router: " << x.rows() << " calibration tokens but mass for " << mass.rows());
  MOE_CHECK(ridge >= 0 && std::isfinite(ridge), "fit_router: ridge must be >= 0, got " << ridge);
  MOE_CHECK(x.allFinite() && mass.allFinite(), "fit_router: inputs contain NaN or infinity");
  const Eigen::MatrixXd xd = x.template cast<double>();
  Eigen::MatrixXd gram = xd.transpose() * xd;
  const double lambda = ridge * gram.trace() / static_cast<double>(gram.rows());
  gram.diagonal().array() += lambda > 0 ? lambda : 1e-12;
  const Eigen::MatrixXd w = gram.ldlt().solve(xd.transpose() * mass);
  MOE_CHECK(w.allFinite(), "fit_router: the least-squares system is singular (constant calibration inputs?)");
  return w.cast<float>();
}

}  // namespace moe
