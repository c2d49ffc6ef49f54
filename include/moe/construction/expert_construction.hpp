// moe — expert construction: the ways LLaMA-MoE (§2.2) and MoEfication choose the neuron sets S_j
// that formula (3) slices. IndependentRandom lives with ExpertPartition (partition.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "moe/construction/kmeans.hpp"
#include "moe/construction/partition.hpp"
#include "moe/core/config.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// A partition and the value of what its construction minimised (see each function).
struct ConstructedPartition {
  ExpertPartition partition;
  double objective = 0;
  int iterations = 0;
};

/// SharingInter's result: N routed experts and R always-on residual experts, disjoint, together
/// covering every neuron.
struct ResidualPartition {
  ExpertPartition routed;
  ExpertPartition residual;
};

namespace detail {

inline std::vector<std::vector<std::int32_t>> sets_from_labels(const std::vector<int>& labels, int k) {
  std::vector<std::vector<std::int32_t>> sets(static_cast<std::size_t>(k));
  for (std::size_t i = 0; i < labels.size(); ++i)
    sets[static_cast<std::size_t>(labels[i])].push_back(static_cast<std::int32_t>(i));
  return sets;
}

/// Sizes of n items split into k groups as evenly as possible (the first n % k get one more).
inline std::vector<Index> even_sizes(Index n, int k) {
  std::vector<Index> s(static_cast<std::size_t>(k), n / k);
  for (Index j = 0; j < n % k; ++j) ++s[static_cast<std::size_t>(j)];
  return s;
}

inline void check_importance(const Eigen::Ref<const Eigen::MatrixXd>& importance, const char* who) {
  MOE_CHECK(importance.rows() > 0 && importance.cols() > 0,
            who << ": importance must be N x d_h with N, d_h > 0, got " << importance.rows() << "x"
                << importance.cols());
  MOE_CHECK(importance.allFinite(), who << ": importance contains NaN or infinity");
}

/// Neurons of row j by decreasing importance, ties to the lower index.
inline std::vector<std::int32_t> by_importance(const Eigen::Ref<const Eigen::MatrixXd>& importance, Index j) {
  std::vector<std::int32_t> order(static_cast<std::size_t>(importance.cols()));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return importance(j, a) > importance(j, b); });
  return order;
}

/// LLaMA-MoE's non-sharing gradient split: repeatedly give the single most valued (expert,
/// neuron) pair left — each expert's best unused neuron, compared across experts not yet full —
/// until every allowed neuron is placed. Ties go to the lower expert. O(d_h · N).
inline std::vector<std::vector<std::int32_t>> greedy_by_importance(
    const Eigen::Ref<const Eigen::MatrixXd>& importance, std::vector<char> used,
    const std::vector<Index>& sizes) {
  const auto n = static_cast<int>(importance.rows());
  std::vector<std::vector<std::int32_t>> order(static_cast<std::size_t>(n)),
      sets(static_cast<std::size_t>(n));
  for (int j = 0; j < n; ++j) order[static_cast<std::size_t>(j)] = by_importance(importance, j);
  std::vector<std::size_t> next(static_cast<std::size_t>(n), 0);
  const Index total = std::accumulate(sizes.begin(), sizes.end(), Index{0});
  for (Index placed = 0; placed < total; ++placed) {
    int best = -1;
    std::int32_t best_neuron = -1;
    for (int j = 0; j < n; ++j) {
      const auto u = static_cast<std::size_t>(j);
      if (static_cast<Index>(sets[u].size()) == sizes[u]) continue;
      while (used[static_cast<std::size_t>(order[u][next[u]])]) ++next[u];
      const std::int32_t i = order[u][next[u]];
      if (best < 0 || importance(j, i) > importance(best, best_neuron)) {
        best = j;
        best_neuron = i;
      }
    }
    used[static_cast<std::size_t>(best_neuron)] = 1;
    sets[static_cast<std::size_t>(best)].push_back(best_neuron);
  }
  for (auto& s : sets) std::sort(s.begin(), s.end());
  return sets;
}

}  // namespace detail

/// IndependentClustering (LLaMA-MoE): balanced k-means (clusters of exactly d_h/N neurons) over
/// the L2-normalised W_up columns — neuron i's d-vector, row i of HF up_proj.weight. objective: the
/// k-means objective Σ_i ||ŵ_i − μ_S(i)||². Throws unless N divides d_h.
template <class T>
ConstructedPartition independent_clustering(const Eigen::Ref<const ColMatrix<T>>& w_up, int num_experts,
                                            std::uint64_t seed, int max_iter = 100) {
  const Index dh = w_up.cols();
  MOE_CHECK(
      num_experts > 0 && dh % num_experts == 0,
      "independent_clustering: N=" << num_experts << " must divide d_h=" << dh << " (equal-size experts)");
  RowMatrix<double> points = w_up.template cast<double>().transpose();
  for (Index i = 0; i < dh; ++i) {
    const double norm = points.row(i).norm();
    if (norm > 0) points.row(i) /= norm;
  }
  KMeansResult km = balanced_kmeans(points, num_experts, seed, max_iter);
  return {ExpertPartition(dh, detail::sets_from_labels(km.labels, num_experts)), km.objective, km.iterations};
}

/// Co-activation partition (MoEfication): the graph whose edge (a, b) weighs A_ab = Σ_t |h_ta|·|h_tb|
/// over calibration tokens, cut into N parts of exactly d_h/N neurons keeping as much weight inside
/// the parts as possible. With H = |h| (T x d_h) and equal part sizes m, the weight inside a part P
/// is ||Σ_{a∈P} H_a||², and the balanced k-means objective on the columns H_a is
/// Σ_a ||H_a||² − (1/m) Σ_P ||Σ_{a∈P} H_a||²: minimising one maximises the other, so this is
/// balanced k-means on the neurons' activation profiles. objective: the fraction of the total edge
/// weight (self-loops included) cut between parts, in [0, 1). h: T x d_h (the input of W_down).
template <class T>
ConstructedPartition coactivation_partition(const ConstRowRef<T>& h, int num_experts, std::uint64_t seed,
                                            int max_iter = 100) {
  const Index dh = h.cols();
  MOE_CHECK(h.rows() > 0, "coactivation_partition: no calibration tokens");
  MOE_CHECK(
      num_experts > 0 && dh % num_experts == 0,
      "coactivation_partition: N=" << num_experts << " must divide d_h=" << dh << " (equal-size experts)");
  const RowMatrix<double> profiles = h.template cast<double>().cwiseAbs().transpose();  // d_h x T
  KMeansResult km = balanced_kmeans(profiles, num_experts, seed, max_iter);
  RowMatrix<double> part_sum = RowMatrix<double>::Zero(num_experts, profiles.cols());
  for (Index a = 0; a < dh; ++a) part_sum.row(km.labels[static_cast<std::size_t>(a)]) += profiles.row(a);
  const double total = part_sum.colwise().sum().squaredNorm();
  const double inside = part_sum.rowwise().squaredNorm().sum();
  const double cut = total > 0 ? 1.0 - inside / total : 0.0;
  return {ExpertPartition(dh, detail::sets_from_labels(km.labels, num_experts)), cut, km.iterations};
}

/// SharingInner (LLaMA-MoE): expert j = the m neurons that data cluster j values most (row j of
/// `importance`, formula (5) accumulated on cluster j; ties to the lower index). Experts may share
/// neurons, and a neuron no cluster ranks in its top m is in no expert. importance: N x d_h.
inline ExpertPartition sharing_inner(const Eigen::Ref<const Eigen::MatrixXd>& importance, Index expert_size) {
  detail::check_importance(importance, "sharing_inner");
  const Index dh = importance.cols();
  MOE_CHECK(expert_size > 0 && expert_size <= dh,
            "sharing_inner: expert size m=" << expert_size << " must be in [1, d_h=" << dh << "]");
  std::vector<std::vector<std::int32_t>> sets;
  for (Index j = 0; j < importance.rows(); ++j) {
    std::vector<std::int32_t> order = detail::by_importance(importance, j);
    order.resize(static_cast<std::size_t>(expert_size));
    std::sort(order.begin(), order.end());
    sets.push_back(std::move(order));
  }
  return ExpertPartition(dh, std::move(sets));
}

/// Gradient split without sharing (LLaMA-MoE's GradientSplit): each neuron goes to the expert
/// whose data cluster values it most, greedily (the most valued (expert, neuron) pair first) with
/// the sizes kept equal: d_h/N each, the first d_h % N experts one more. importance: N x d_h.
inline ExpertPartition gradient_partition(const Eigen::Ref<const Eigen::MatrixXd>& importance) {
  detail::check_importance(importance, "gradient_partition");
  const Index dh = importance.cols();
  const auto n = static_cast<int>(importance.rows());
  MOE_CHECK(dh >= n, "gradient_partition: cannot split d_h=" << dh << " neurons into N=" << n << " experts");
  return ExpertPartition(
      dh, detail::greedy_by_importance(importance, std::vector<char>(static_cast<std::size_t>(dh), 0),
                                       detail::even_sizes(dh, n)));
}

/// SharingInter (LLaMA-MoE residual split): the neurons most experts would share move to R
/// always-on residual experts of `residual_size` neurons each. Rounds: each cluster j ranks the
/// neurons not yet residual and keeps its top `residual_size`; the neurons kept by the most
/// clusters (ascending index among equals) become residual, up to R·residual_size in all. The
/// residual list is cut in R consecutive runs; the routed experts then split the remaining
/// d_h − R·residual_size neurons greedily by importance (gradient_partition's rule), as evenly
/// as possible. importance: N x d_h, one row per routed expert's data cluster.
inline ResidualPartition sharing_inter(const Eigen::Ref<const Eigen::MatrixXd>& importance,
                                       int residual_experts, Index residual_size) {
  detail::check_importance(importance, "sharing_inter");
  const Index dh = importance.cols();
  const auto n = static_cast<int>(importance.rows());
  MOE_CHECK(residual_experts > 0, "sharing_inter: needs R >= 1 residual experts, got " << residual_experts);
  MOE_CHECK(residual_size > 0 && residual_experts * residual_size + n <= dh,
            "sharing_inter: R=" << residual_experts << " residual experts of " << residual_size
                                << " neurons leave fewer than N=" << n << " of d_h=" << dh
                                << " neurons for the routed experts");
  const Index capacity = residual_experts * residual_size;
  std::vector<char> residual(static_cast<std::size_t>(dh), 0);
  std::vector<std::int32_t> chosen;
  while (static_cast<Index>(chosen.size()) < capacity) {
    std::vector<int> votes(static_cast<std::size_t>(dh), 0);
    for (int j = 0; j < n; ++j) {
      Index kept = 0;
      for (const std::int32_t i : detail::by_importance(importance, j)) {
        if (kept == residual_size) break;
        if (residual[static_cast<std::size_t>(i)]) continue;
        ++votes[static_cast<std::size_t>(i)];
        ++kept;
      }
    }
    const int most = *std::max_element(votes.begin(), votes.end());
    for (Index i = 0; i < dh && static_cast<Index>(chosen.size()) < capacity; ++i)
      if (votes[static_cast<std::size_t>(i)] == most) {
        residual[static_cast<std::size_t>(i)] = 1;
        chosen.push_back(static_cast<std::int32_t>(i));
      }
  }
  std::vector<std::vector<std::int32_t>> residual_sets;
  for (int r = 0; r < residual_experts; ++r) {
    auto first = chosen.begin() + static_cast<std::ptrdiff_t>(r * residual_size);
    std::vector<std::int32_t> s(first, first + static_cast<std::ptrdiff_t>(residual_size));
    std::sort(s.begin(), s.end());
    residual_sets.push_back(std::move(s));
  }
  return {ExpertPartition(
              dh, detail::greedy_by_importance(importance, residual, detail::even_sizes(dh - capacity, n))),
          ExpertPartition(dh, std::move(residual_sets))};
}

}  // namespace moe
