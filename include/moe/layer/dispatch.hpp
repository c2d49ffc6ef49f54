// moe — grouping (token, slot) pairs by expert: a stable counting sort.
#pragma once

#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// The permutation that groups a routing's T·k (token, slot) pairs by expert. Expert e owns the
/// permuted rows [offsets[e], offsets[e+1]); inside an expert, rows keep (token, slot) order
/// (stable), so the grouping depends only on the routing. A pair with expert id -1 (dropped by an
/// expert capacity) gets no row.
struct ExpertDispatch {
  std::vector<Index> counts;   ///< N: (token, slot) pairs routed to each expert
  std::vector<Index> offsets;  ///< N+1: exclusive prefix sum of counts; offsets[N] = kept pairs
  std::vector<Index> token;    ///< offsets[N]: token of permuted row r
  std::vector<Index> pair;     ///< offsets[N]: pair index t·k + s of permuted row r
  std::vector<Index> row_of;   ///< T·k: permuted row of pair (t, s), at index t·k + s; -1 if dropped
  Index dropped = 0;           ///< pairs with id -1

  /// Capacity for T·k pairs over N experts, so build_dispatch allocates nothing.
  void reserve(Index pairs, int num_experts) {
    counts.reserve(static_cast<std::size_t>(num_experts));
    offsets.reserve(static_cast<std::size_t>(num_experts) + 1);
    token.reserve(static_cast<std::size_t>(pairs));
    pair.reserve(static_cast<std::size_t>(pairs));
    row_of.reserve(static_cast<std::size_t>(pairs));
  }
};

/// Counting sort of ids (T x k, expert per token and slot; -1 = dropped) into `out`. Throws
/// moe::Error naming the token and slot of an id outside [-1, num_experts).
inline void build_dispatch(const Eigen::Ref<const IdMatrix>& ids, int num_experts, ExpertDispatch& out) {
  MOE_CHECK(num_experts >= 1, "build_dispatch: no experts (N = " << num_experts << ")");
  const Index tokens = ids.rows(), k = ids.cols(), pairs = tokens * k;
  const auto n = static_cast<std::size_t>(num_experts);
  out.counts.assign(n, 0);
  out.dropped = 0;
  for (Index t = 0; t < tokens; ++t)
    for (Index s = 0; s < k; ++s) {
      const Index e = ids(t, s);
      MOE_CHECK(e >= -1 && e < num_experts, "routing: token " << t << " slot " << s << " names expert " << e
                                                              << ", outside [0, " << num_experts << ")");
      if (e < 0)
        ++out.dropped;
      else
        ++out.counts[static_cast<std::size_t>(e)];
    }
  out.offsets.resize(n + 1);
  out.offsets[0] = 0;
  for (std::size_t e = 0; e < n; ++e) out.offsets[e + 1] = out.offsets[e] + out.counts[e];
  const auto kept = static_cast<std::size_t>(out.offsets[n]);
  out.token.resize(kept);
  out.pair.resize(kept);
  out.row_of.resize(static_cast<std::size_t>(pairs));
  // Scatter in (token, slot) order using counts as running fill levels, then restore counts.
  for (std::size_t e = 0; e < n; ++e) out.counts[e] = 0;
  for (Index t = 0; t < tokens; ++t)
    for (Index s = 0; s < k; ++s) {
      const auto p = static_cast<std::size_t>(t * k + s);
      if (ids(t, s) < 0) {
        out.row_of[p] = -1;
        continue;
      }
      const auto e = static_cast<std::size_t>(ids(t, s));
      const Index r = out.offsets[e] + out.counts[e]++;
      out.token[static_cast<std::size_t>(r)] = t;
      out.pair[static_cast<std::size_t>(r)] = static_cast<Index>(p);
      out.row_of[p] = r;
    }
}

}  // namespace moe
