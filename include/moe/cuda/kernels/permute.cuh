// moe — grouping the routed (token, slot) pairs by expert on the GPU: a count per expert, a scan,
// and a stable scatter, so expert e's pairs occupy rows offsets[e] .. offsets[e+1] - 1 in
// (token, slot) order — the order of ExpertDispatch on the CPU (dispatch.hpp).
//
// One kernel of one block does all three, so a forward spends one launch on the grouping instead
// of three (at T = 1 a launch costs about as much as the work). No atomic decides an order: the
// counts are sums of ones (the same whatever order they arrive in), and each pair's row is its
// expert's first row plus the number of earlier pairs of that expert, counted with warp matches,
// so the grouping (and everything computed from it) is the same on every run.
#pragma once

#include <cuda_runtime.h>

#include "moe/cuda/arch/launch.cuh"
#include "moe/cuda/kernels/routing.cuh"

namespace moe::cuda::kernels {

/// Threads of group_by_expert's one block: 32 warps, so a round places 1024 pairs.
constexpr int kGroupThreads = 1024;
constexpr int kGroupWarps = kGroupThreads / 32;
static_assert(kGroupThreads >= kMaxExperts, "one thread per expert advances the rows");

/// Groups the `pairs` routed pairs (a = t·k + slot, expert ids[a], -1 for a dropped pair) by expert.
/// Writes, for the n experts:
/// - counts[e], and offsets[e] = Σ_{e' < e} counts[e'] (n + 1 values);
/// - the experts with 1..few_rows pairs in few_experts[0 .. *num_few) (the matrix-vector path),
///   and tile_offsets[e] = Σ_{e' < e} ceil(counts[e'] / tile_rows) over the other experts only
///   (the tile path; n + 1 values);
/// - sorted_pair[row] = a and row_of[a] = row, expert e's pairs at rows offsets[e], offsets[e] + 1,
///   ... in pair order; dropped pairs get no row;
/// - *bad_token: the smallest token whose slot 0 was dropped (route_tokens drops every slot of a
///   token whose logits are not finite), or 0xffffffff.
/// One block of kGroupThreads threads; n <= kMaxExperts.
/// One function past 60 lines on purpose: its phases share registers and barriers, and how a
/// split kernel is compiled (registers, spills) can only be checked on a GPU.
static __global__ void __launch_bounds__(kGroupThreads)
    // NOLINTNEXTLINE(readability-function-size): one kernel, as its comment says
    group_by_expert(const int* ids, long long pairs, int k, int n, int tile_rows, int few_rows, int* counts,
                    long long* offsets, long long* tile_offsets, int* few_experts, int* num_few,
                    long long* sorted_pair, long long* row_of, unsigned* bad_token) {
  wait_for_previous_kernel();
  __shared__ int count[kMaxExperts];
  __shared__ long long next_row[kMaxExperts];          // expert e's first row of this round
  __shared__ int warp_hits[kGroupWarps][kMaxExperts];  // pairs of expert e in warp w this round
  __shared__ unsigned bad;
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  for (int e = tid; e < n; e += blockDim.x) {
    count[e] = 0;
    for (int w = 0; w < kGroupWarps; ++w) warp_hits[w][e] = 0;
  }
  if (tid == 0) bad = 0xffffffffu;
  __syncthreads();
  for (long long a = tid; a < pairs; a += blockDim.x) {
    const int e = ids[a];
    if (e >= 0)
      atomicAdd(&count[e], 1);
    else if (a % k == 0)
      atomicMin(&bad, static_cast<unsigned>(a / k));
  }
  __syncthreads();
  if (tid == 0) {
    long long rows = 0, tiles = 0;
    int few = 0;
    for (int e = 0; e < n; ++e) {
      counts[e] = count[e];
      offsets[e] = next_row[e] = rows;
      tile_offsets[e] = tiles;
      rows += count[e];
      if (count[e] > few_rows)
        tiles += (count[e] + tile_rows - 1) / tile_rows;
      else if (count[e] > 0)
        few_experts[few++] = e;
    }
    offsets[n] = rows;
    tile_offsets[n] = tiles;
    *num_few = few;
    *bad_token = bad;
  }
  __syncthreads();
  // Rounds of blockDim pairs: a pair's row = its expert's next row + that expert's pairs in the
  // earlier warps of the round + those in earlier lanes of its own warp.
  for (long long start = 0; start < pairs; start += blockDim.x) {
    const long long a = start + tid;
    const int e = a < pairs ? ids[a] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);  // the lanes holding the same expert
    const bool first_peer = lane == __ffs(static_cast<int>(peers)) - 1;
    if (e >= 0 && first_peer) warp_hits[warp][e] = __popc(peers);
    __syncthreads();
    if (e >= 0) {
      long long row = next_row[e] + __popc(peers & ((1u << lane) - 1u));
      for (int w = 0; w < warp; ++w) row += warp_hits[w][e];
      sorted_pair[row] = a;
      row_of[a] = row;
    }
    __syncthreads();
    if (tid < n) {
      for (int w = 0; w < kGroupWarps; ++w) {
        next_row[tid] += warp_hits[w][tid];
        warp_hits[w][tid] = 0;
      }
    }
    __syncthreads();
  }
}

}  // namespace moe::cuda::kernels
