// moe — expert partitions: N index sets over the dense hidden neurons [0, d_h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/detail/rng.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// N neuron index sets S_1..S_N over [0, d_h), the S_j of paper formula (3). Validated on
/// construction: d_h > 0, N > 0, every set non-empty, every index in range, no index twice in one
/// set. Sets may overlap (Sharing* constructions) and may differ in size (d_h % N != 0); use
/// is_disjoint() / covers_all() where a construction promises more.
class ExpertPartition {
 public:
  ExpertPartition(Index hidden_dim, std::vector<std::vector<std::int32_t>> sets)
      : hidden_dim_(hidden_dim), sets_(std::move(sets)) {
    MOE_CHECK(hidden_dim_ > 0, "ExpertPartition: hidden_dim d_h must be positive, got " << hidden_dim_);
    MOE_CHECK(!sets_.empty(), "ExpertPartition: no experts (N = 0)");
    std::vector<std::int32_t> seen_in(static_cast<std::size_t>(hidden_dim_), -1);
    std::vector<int> owners(static_cast<std::size_t>(hidden_dim_), 0);
    for (std::size_t j = 0; j < sets_.size(); ++j) {
      MOE_CHECK(!sets_[j].empty(), "ExpertPartition: expert " << j << " has no neurons");
      for (const std::int32_t i : sets_[j]) {
        MOE_CHECK(i >= 0 && i < hidden_dim_, "ExpertPartition: expert " << j << " has neuron index " << i
                                                                        << " outside [0, " << hidden_dim_
                                                                        << ")");
        const auto u = static_cast<std::size_t>(i);
        MOE_CHECK(seen_in[u] != static_cast<std::int32_t>(j),
                  "ExpertPartition: expert " << j << " lists neuron " << i << " twice");
        seen_in[u] = static_cast<std::int32_t>(j);
        ++owners[u];
      }
    }
    disjoint_ = std::all_of(owners.begin(), owners.end(), [](int c) { return c <= 1; });
    covers_all_ = std::all_of(owners.begin(), owners.end(), [](int c) { return c >= 1; });
  }

  /// IndependentRandom (LLaMA-MoE; what the released models use): shuffle [0, d_h) with a
  /// seeded SplitMix64 Fisher–Yates, cut into N consecutive runs. With d_h % N = r != 0 the first r
  /// experts get one neuron more. Each set is sorted ascending (order inside an expert does not
  /// change the math, and sorted sets slice with better locality). Same seed, same partition, on
  /// every platform.
  static ExpertPartition independent_random(Index hidden_dim, int num_experts, std::uint64_t seed) {
    MOE_CHECK(num_experts > 0,
              "independent_random: number of experts N must be positive, got " << num_experts);
    MOE_CHECK(hidden_dim >= num_experts,
              "independent_random: cannot split d_h=" << hidden_dim << " neurons into N=" << num_experts
                                                      << " non-empty experts");
    std::vector<std::int32_t> perm(static_cast<std::size_t>(hidden_dim));
    for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<std::int32_t>(i);
    detail::SplitMix64 rng(seed);
    for (std::size_t i = perm.size() - 1; i > 0; --i)
      std::swap(perm[i], perm[static_cast<std::size_t>(rng.below(i + 1))]);
    std::vector<std::vector<std::int32_t>> sets(static_cast<std::size_t>(num_experts));
    const Index base = hidden_dim / num_experts, extra = hidden_dim % num_experts;
    auto it = perm.begin();
    for (int j = 0; j < num_experts; ++j) {
      const auto size = static_cast<std::ptrdiff_t>(base + (j < extra ? 1 : 0));
      sets[static_cast<std::size_t>(j)].assign(it, it + size);
      std::sort(sets[static_cast<std::size_t>(j)].begin(), sets[static_cast<std::size_t>(j)].end());
      it += size;
    }
    return ExpertPartition(hidden_dim, std::move(sets));
  }

  int num_experts() const { return static_cast<int>(sets_.size()); }  ///< N
  Index hidden_dim() const { return hidden_dim_; }                    ///< d_h
  /// S_j, the neuron indices of expert j.
  const std::vector<std::int32_t>& expert(int j) const {
    MOE_CHECK(j >= 0 && j < num_experts(),
              "ExpertPartition: expert " << j << " out of range [0, " << num_experts() << ")");
    return sets_[static_cast<std::size_t>(j)];
  }
  Index expert_size(int j) const { return static_cast<Index>(expert(j).size()); }  ///< m_j
  bool is_disjoint() const { return disjoint_; }   ///< no neuron in two experts
  bool covers_all() const { return covers_all_; }  ///< every neuron in some expert

 private:
  Index hidden_dim_;
  std::vector<std::vector<std::int32_t>> sets_;
  bool disjoint_ = false, covers_all_ = false;
};

}  // namespace moe
