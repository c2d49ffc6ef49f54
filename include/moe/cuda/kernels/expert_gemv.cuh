// moe — the decode path of the CUDA grouped expert products: experts with at most kFewRows token
// rows (every expert at T = 1, most at T = 16) as matrix-vector products.
//
// A tile kernel (expert_gemm.cuh) with one token row would leave most of its 64 rows empty and
// read each weight with little memory-level parallelism. Here one warp owns one output column:
// its lanes stream the column's weights (contiguous in the Hugging Face layout) 16 bytes at a time
// and every token row of the expert uses them while they are in registers, so the expert's
// weights are read from memory once for all its rows, across all multiprocessors. Blocks find
// their expert in the compact list group_by_expert makes of the experts with 1..kFewRows rows.
//
// Determinism: lane l sums the k it loads, in order, and a fixed butterfly adds the lanes: each
// output is the same function of its row and column on every run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "moe/core/math.hpp"
#include "moe/cuda/arch/launch.cuh"
#include "moe/cuda/kernels/expert_gemm.cuh"
#include "moe/cuda/kernels/routing.cuh"

namespace moe::cuda {

constexpr int kFewRows = 16;   ///< experts with this many rows or fewer take the matrix-vector path
constexpr int kGemvWarps = 8;  ///< output columns per block (one per warp)

namespace kernels {

/// Values of W in 16 bytes.
template <class W>
constexpr int kVector = 16 / static_cast<int>(sizeof(W));

/// The 16 bytes at p (16-byte aligned), widened exactly to float.
__device__ inline void load_widened(const float* p, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
__device__ inline void load_widened(const __nv_bfloat16* p, float* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // bf16 is the high half of a float: shifting in zeros is exact
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}
__device__ inline void load_widened(const __half* p, float* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // the lower address is the low half of the word
    out[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] & 0xffffu)));
    out[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] >> 16)));
  }
}

/// V floats at p (16-byte aligned when V is a multiple of 4).
template <int V>
__device__ inline void load_floats(const float* p, float* out) {
#pragma unroll
  for (int i = 0; i < V; i += 4) {
    const float4 v = *reinterpret_cast<const float4*>(p + i);
    out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
  }
}

/// out[r] += Σ_k a_r[k]·w[k] over one warp's share of k < depth (lane l: the 16-byte chunks
/// l, l + 32, ... when kVec, else the single k ≡ l mod 32), for the `rows` (<= kRows) row pointers
/// a_r. kVec: depth a multiple of kVector<W>, w and every a_r 16-byte aligned. Each row's sum is
/// the same whatever kRows and rows are.
template <int kMats, int kRows, bool kVec, class W>
__device__ inline void warp_dots(const W* const (&w)[kMats], const float* const (&a)[kRows], int rows,
                                 long long depth, float (&acc)[kMats][kRows]) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  if constexpr (kVec) {
    constexpr int V = kVector<W>;
    // 16-byte loads in flight per lane and weight matrix: more where few rows leave registers.
    // ([[maybe_unused]]: a host compiler that does not know #pragma unroll, the emulator's.)
    [[maybe_unused]] constexpr int kUnroll = kRows <= 4 ? 4 : 2;
#pragma unroll kUnroll
    for (long long k0 = static_cast<long long>(lane) * V; k0 < depth; k0 += 32 * V) {
      float wv[kMats][V];
#pragma unroll
      for (int q = 0; q < kMats; ++q) load_widened(w[q] + k0, wv[q]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) break;
        float av[V];
        load_floats<V>(a[r] + k0, av);
#pragma unroll
        for (int q = 0; q < kMats; ++q)
#pragma unroll
          for (int j = 0; j < V; ++j) acc[q][r] = fmaf(av[j], wv[q][j], acc[q][r]);
      }
    }
  } else {
    for (long long k = lane; k < depth; k += 32) {
      float wv[kMats];
#pragma unroll
      for (int q = 0; q < kMats; ++q) wv[q] = widen(w[q][k]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) break;
        const float av = a[r][k];
#pragma unroll
        for (int q = 0; q < kMats; ++q) acc[q][r] = fmaf(av, wv[q], acc[q][r]);
      }
    }
  }
}

/// h(row, c) = (x·W_up)(row, c) · SiLU((x·W_gate)(row, c)) for the rows of the experts in
/// few_experts[0 .. *num_few) (each 1..kRows rows), x's rows gathered by token. Grid:
/// (min(N, pairs), ceil(max m / kGemvWarps)), kGemvWarps warps; one warp per column c.
/// kRows <= kFewRows: the rows an expert can have here (min(T, few_rows), since a token routes to an
/// expert at most once); fewer rows, fewer registers, more warps resident (at T = 1, all of them).
template <class W, bool kVec, int kRows>
__global__ void __launch_bounds__(kGemvWarps * 32)
    expert_hidden_swiglu_few(const float* x, const long long* sorted_pair, int k, DeviceExperts<W> ex,
                             const long long* offsets, const int* few_experts, const int* num_few, float* h,
                             long long ldh) {
  wait_for_previous_kernel();
  if (static_cast<int>(blockIdx.x) >= *num_few) return;
  const int e = few_experts[blockIdx.x];
  const long long row0 = offsets[e];
  const int rows = static_cast<int>(offsets[e + 1] - row0);
  if (rows > kRows) __trap();  // the launch's bound is wrong: never skip rows silently
  const long long c = static_cast<long long>(blockIdx.y) * kGemvWarps + threadIdx.x / 32;
  if (c >= ex.hidden[e]) return;  // the whole warp: c is the same in its lanes
  const long long d = ex.d;
  const W* const w[2] = {ex.gate + ex.weight_offset[e] + c * d, ex.up + ex.weight_offset[e] + c * d};
  const float* a[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) a[r] = r < rows ? x + sorted_pair[row0 + r] / k * d : x;
  float acc[2][kRows] = {};
  warp_dots<2, kRows, kVec>(w, a, rows, d, acc);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
    const float g = warp_sum(acc[0][r]), u = warp_sum(acc[1][r]);
    if (threadIdx.x % 32 == 0) h[(row0 + r) * ldh + c] = u * silu(g);
  }
}

/// y_rows(row, c) = h(row, :)·W_down(:, c) for the rows of the experts in few_experts. h: row r
/// at h + r·ldh. Grid: (min(N, pairs), ceil(d / kGemvWarps)), kGemvWarps warps; kRows as above.
template <class W, bool kVec, int kRows>
__global__ void __launch_bounds__(kGemvWarps * 32)
    expert_down_few(const float* h, long long ldh, DeviceExperts<W> ex, const long long* offsets,
                    const int* few_experts, const int* num_few, float* y_rows) {
  wait_for_previous_kernel();
  if (static_cast<int>(blockIdx.x) >= *num_few) return;
  const int e = few_experts[blockIdx.x];
  const long long row0 = offsets[e], d = ex.d, m = ex.hidden[e];
  const int rows = static_cast<int>(offsets[e + 1] - row0);
  if (rows > kRows) __trap();
  const long long c = static_cast<long long>(blockIdx.y) * kGemvWarps + threadIdx.x / 32;
  if (c >= d) return;
  const W* const w[1] = {ex.down + ex.weight_offset[e] + c * m};
  const float* a[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) a[r] = h + (row0 + (r < rows ? r : 0)) * ldh;
  float acc[1][kRows] = {};
  warp_dots<1, kRows, kVec>(w, a, rows, m, acc);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
    const float y = warp_sum(acc[0][r]);
    if (threadIdx.x % 32 == 0) y_rows[(row0 + r) * d + c] = y;
  }
}

}  // namespace kernels
}  // namespace moe::cuda
