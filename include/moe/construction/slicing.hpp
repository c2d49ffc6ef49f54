// moe — expert slicing, paper formula (3).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/construction/partition.hpp"
#include "moe/core/config.hpp"
#include "moe/layer/ffn.hpp"

namespace moe {

/// Slices one expert out of a dense FFN, paper formula (3):
///   W_up^(j) = W_up[:, S_j],  W_gate^(j) = W_gate[:, S_j],  W_down^(j) = W_down[S_j, :].
/// Column i of the expert's gate/up and row i of its down are dense neuron `neurons[i]`. Copies
/// (m_j of d_h columns; in the column-major layout each gate/up column is contiguous).
template <class T>
FfnWeights<T> slice_expert(const FfnWeightsView<T>& dense, const std::vector<std::int32_t>& neurons) {
  MOE_CHECK(!neurons.empty(), "slice_expert: empty neuron set");
  const Index d = dense.model_dim(), dh = dense.hidden_dim(), m = static_cast<Index>(neurons.size());
  FfnWeights<T> e{ColMatrix<T>(d, m), ColMatrix<T>(d, m), ColMatrix<T>(m, d)};
  for (Index i = 0; i < m; ++i) {
    const Index n = neurons[static_cast<std::size_t>(i)];
    MOE_CHECK(n >= 0 && n < dh, "slice_expert: neuron " << n << " outside [0, " << dh << ")");
    e.gate.col(i) = dense.gate.col(n);
    e.up.col(i) = dense.up.col(n);
    e.down.row(i) = dense.down.row(n);
  }
  return e;
}

/// All N experts of `partition` (formula 3 for each S_j). The partition's d_h must match.
template <class T>
std::vector<FfnWeights<T>> slice_experts(const FfnWeightsView<T>& dense, const ExpertPartition& partition) {
  MOE_CHECK(partition.hidden_dim() == dense.hidden_dim(),
            "slice_experts: partition is over d_h=" << partition.hidden_dim()
                                                    << " neurons, the dense FFN has " << dense.hidden_dim());
  std::vector<FfnWeights<T>> experts;
  experts.reserve(static_cast<std::size_t>(partition.num_experts()));
  for (int j = 0; j < partition.num_experts(); ++j)
    experts.push_back(slice_expert(dense, partition.expert(j)));
  return experts;
}

}  // namespace moe
