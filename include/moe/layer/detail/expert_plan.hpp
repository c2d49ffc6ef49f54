// moe — the plan of one MoE forward's expert work, built from its routing before any expert runs:
// which token rows each expert has, where they sit in the scratch buffers, and the fixed tasks of
// each stage (gather, gate/up, down). MoELayer::forward_routed runs the stages over it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/detail/scratch_layout.hpp"
#include "moe/layer/detail/token_rows.hpp"
#include "moe/layer/detail/transpose.hpp"
#include "moe/layer/dispatch.hpp"

namespace moe::detail {

/// One task of a stage: an expert and its part, a gather panel or a column block.
struct ExpertTask {
  int expert = 0;
  Index part = 0;
};

/// Which (token, slot) rows each expert has (the dispatch: a stable counting sort by expert),
/// where each expert's rows start in the scratch buffers (rows padded as scratch_rows lays them
/// out), and the tasks of the three expert stages, in stage order. Only experts with rows get
/// tasks, and the tasks never depend on the thread count (bitwise determinism).
struct ExpertPlan {
  ExpertDispatch dispatch;
  std::vector<Index> row_offsets;     ///< N + 1: expert e's first scratch row
  std::vector<Index> hidden_offsets;  ///< N + 1: expert e's first hidden value
  std::vector<ExpertTask> tasks;      ///< gather panels, gate/up column blocks, down column blocks
  Index gather_tasks = 0, hidden_tasks = 0, down_tasks = 0;
  Index h_pair_width = 0;  ///< bf16 pairs per packed row of h: the widest expert's

  Index rows(int e) const { return dispatch.counts[static_cast<std::size_t>(e)]; }
  Index row_offset(int e) const { return row_offsets[static_cast<std::size_t>(e)]; }
  Index hidden_offset(int e) const { return hidden_offsets[static_cast<std::size_t>(e)]; }
  ExpertTask gather_task(Index i) const { return tasks[static_cast<std::size_t>(i)]; }
  ExpertTask hidden_task(Index i) const { return tasks[static_cast<std::size_t>(gather_tasks + i)]; }
  ExpertTask down_task(Index i) const {
    return tasks[static_cast<std::size_t>(gather_tasks + hidden_tasks + i)];
  }

  /// Room for T·k = `pairs` rows over n experts and `tasks` tasks: planning allocates nothing.
  void reserve(Index pairs, int n, Index max_tasks) {
    dispatch.reserve(pairs, n);
    row_offsets.reserve(static_cast<std::size_t>(n) + 1);
    hidden_offsets.reserve(static_cast<std::size_t>(n) + 1);
    tasks.reserve(static_cast<std::size_t>(max_tasks));
  }
};

/// Plans the routing ids (T x k; -1: a dropped slot) over n experts of model width d, expert e of
/// hidden width hidden(e), for activations T.
template <class T, class Hidden>
void plan_experts(const Eigen::Ref<const IdMatrix>& ids, int n, Index d, Hidden&& hidden, ExpertPlan& plan) {
  build_dispatch(ids, n, plan.dispatch);
  auto& roff = plan.row_offsets;
  auto& hoff = plan.hidden_offsets;
  roff.resize(static_cast<std::size_t>(n) + 1);
  hoff.resize(static_cast<std::size_t>(n) + 1);
  roff[0] = hoff[0] = 0;
  plan.tasks.clear();
  plan.h_pair_width = 0;
  for (int e = 0; e < n; ++e) {
    const auto u = static_cast<std::size_t>(e);
    const Index rows = scratch_rows<T>(plan.rows(e));
    roff[u + 1] = roff[u] + rows;
    hoff[u + 1] = hoff[u] + rows * hidden(e);
    plan.h_pair_width = std::max(plan.h_pair_width, (hidden(e) + 1) / 2);
    for (Index p = 0; p < num_gather_panels<T>(plan.rows(e)); ++p) plan.tasks.push_back({e, p});
  }
  plan.gather_tasks = static_cast<Index>(plan.tasks.size());
  for (int e = 0; e < n; ++e)
    if (plan.rows(e) > 0)
      for (Index b = 0; b < num_column_blocks(hidden(e)); ++b) plan.tasks.push_back({e, b});
  plan.hidden_tasks = static_cast<Index>(plan.tasks.size()) - plan.gather_tasks;
  for (int e = 0; e < n; ++e)
    if (plan.rows(e) > 0)
      for (Index b = 0; b < num_column_blocks(d); ++b) plan.tasks.push_back({e, b});
  plan.down_tasks = static_cast<Index>(plan.tasks.size()) - plan.gather_tasks - plan.hidden_tasks;
}

/// The experts' scratch, every expert's rows one after another at the plan's offsets, each in the
/// layout of scratch_layout.hpp for its row count: x, the inputs; g and h, the gate and hidden
/// activations; y, the outputs. Past kFewRows rows an expert's outputs are column-major, so the
/// down stage also copies them as token rows into x (which only the gate/up stage reads), rows
/// padded_row_stride(d) apart, for the combine. Where the many-rows kernel reads packed
/// activations (uses_packed_activations): bf16 pairs of x and h, or token tiles of h (x's tiles
/// replace its column-major scratch).
template <class T>
struct ExpertScratch {
  std::vector<T> x, g, h, y;
  std::vector<std::uint32_t> x_pairs, h_pairs;  ///< kBf16Pairs
  std::vector<T> h_tiles;                       ///< kFloatTiles

  /// Room for `rows` scratch rows (padding included) of width d, hidden width up to max_m.
  template <class W>
  void reserve(Index rows, Index d, Index max_m) {
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    grow(x, u(rows * padded_row_stride(d)));  // also the outputs as token rows
    grow(y, u(rows * d));
    grow(g, u(rows * max_m));
    grow(h, u(rows * max_m));
    if constexpr (kBf16Pairs<T, W>) {
      grow(x_pairs, u(rows * ((d + 1) / 2)));
      grow(h_pairs, u(rows * ((max_m + 1) / 2)));
    }
    if constexpr (kFloatTiles<T, W>) grow(h_tiles, u(rows * max_m));
  }

  /// Expert e's input rows, where the gather writes them.
  T* input(const ExpertPlan& plan, int e, Index d) { return x.data() + plan.row_offset(e) * d; }

  /// Expert e's packed activations (hidden width m), or none where its kernel reads the float
  /// scratch.
  template <class W>
  PackedScratch<PackedElement<T, W>> packed(const ExpertPlan& plan, int e, Index d, Index m) {
    if (!uses_packed_activations<T, W>(plan.rows(e))) return {};
    const Index ld = scratch_rows<T>(plan.rows(e)), r0 = plan.row_offset(e);
    if constexpr (kBf16Pairs<T, W>)
      return {x_pairs.data() + r0 * ((d + 1) / 2), h_pairs.data() + r0 * plan.h_pair_width, ld, (d + 1) / 2,
              plan.h_pair_width};
    else if constexpr (kFloatTiles<T, W>)
      return {x.data() + r0 * d, h_tiles.data() + plan.hidden_offset(e), ld, d, m};
    else
      return {};
  }

  /// Calls f(x, g, h, y, block) on expert e's slices (with_scratch_layout; hidden width m).
  template <class F>
  void with_expert(const ExpertPlan& plan, int e, Index d, Index m, F&& f) {
    const Index r0 = plan.row_offset(e), h0 = plan.hidden_offset(e);
    with_scratch_layout(plan.rows(e), m, d, x.data() + r0 * d, g.data() + h0, h.data() + h0,
                        y.data() + r0 * d, f);
  }

  /// Row `local` of expert e's outputs as token rows: where the down stage copied it past
  /// kFewRows rows, else in y itself.
  T* output_row(const ExpertPlan& plan, int e, Index local, Index d) {
    const Index r = plan.row_offset(e) + local;
    return plan.rows(e) > kFewRows ? x.data() + r * padded_row_stride(d) : y.data() + r * d;
  }

 private:
  template <class V>
  static void grow(V& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
  }
};

}  // namespace moe::detail
