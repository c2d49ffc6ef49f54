// moe — grouping the routed (token, slot) pairs by expert on the GPU: a count per expert, a scan,
// and a stable scatter, so expert e's pairs occupy rows offsets[e] .. offsets[e+1] - 1 in
// (token, slot) order — the order of ExpertDispatch on the CPU (dispatch.hpp).
//
// No atomics decide an order: each expert's block scans the pairs in order, so the grouping (and
// everything computed from it) is the same on every run.
#pragma once

#include <cuda_runtime.h>

namespace moe::cuda::kernels {

/// Sum over a block of up to 1024 threads (a multiple of 32); the result in every thread.
__device__ inline int block_sum(int v, int* scratch /* 32 ints of shared memory */) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += scratch[w];
  __syncthreads();
  return total;
}

/// counts[e] = number of the `pairs` ids equal to e. One block per expert (blockDim a multiple of 32).
static __global__ void count_per_expert(const int* ids, long long pairs, int* counts) {
  __shared__ int scratch[32];
  const int e = static_cast<int>(blockIdx.x);
  int c = 0;
  for (long long a = threadIdx.x; a < pairs; a += blockDim.x) c += ids[a] == e ? 1 : 0;
  c = block_sum(c, scratch);
  if (threadIdx.x == 0) counts[e] = c;
}

/// offsets[e] = Σ_{e' < e} counts[e'] (n + 1 values); the experts with 1..few_rows pairs listed
/// in few_experts[0 .. *num_few) (the matrix-vector path), and tile_offsets[e] = Σ_{e' < e} of
/// ceil(counts[e'] / tile_rows) over the other experts only (the tile path; n + 1 values). One
/// thread: n is an expert count (<= kMaxExperts).
static __global__ void scan_counts(const int* counts, int n, int tile_rows, int few_rows, long long* offsets,
                                   long long* tile_offsets, int* few_experts, int* num_few) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  long long rows = 0, tiles = 0;
  int few = 0;
  for (int e = 0; e < n; ++e) {
    offsets[e] = rows;
    tile_offsets[e] = tiles;
    rows += counts[e];
    if (counts[e] > few_rows)
      tiles += (counts[e] + tile_rows - 1) / tile_rows;
    else if (counts[e] > 0)
      few_experts[few++] = e;
  }
  offsets[n] = rows;
  tile_offsets[n] = tiles;
  *num_few = few;
}

/// Expert e's pairs, in pair order, get rows offsets[e], offsets[e] + 1, ...: sorted_pair[row] = a
/// (a = t·k + slot) and row_of[a] = row. One block per expert, blockDim a multiple of 32; each
/// round ranks blockDim pairs with warp ballots. Dropped pairs (id -1) get no row.
static __global__ void scatter_by_expert(const int* ids, long long pairs, const long long* offsets,
                                         long long* sorted_pair, long long* row_of) {
  __shared__ int in_warp[32];
  const int e = static_cast<int>(blockIdx.x);
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  long long base = offsets[e];
  for (long long start = 0; start < pairs; start += blockDim.x) {
    const long long a = start + threadIdx.x;
    const bool hit = a < pairs && ids[a] == e;
    const unsigned mask = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) in_warp[warp] = __popc(mask);
    __syncthreads();
    long long before = __popc(mask & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      if (w < warp) before += in_warp[w];
      total += in_warp[w];
    }
    if (hit) {
      sorted_pair[base + before] = a;
      row_of[a] = base + before;
    }
    base += total;
    __syncthreads();  // in_warp is rewritten next round
  }
}

}  // namespace moe::cuda::kernels
