// moe — the prefill path of the CUDA grouped expert products for bf16 and fp16 weights: the 64-row
// tiles of expert_gemm.cuh on the tensor cores (WMMA, 16-bit x 16-bit products, float accumulation).
//
// The tensor cores multiply two values of the same 16-bit type, so the activations are rounded to
// the weights' type (to nearest even) as the tiles are loaded (x in the gate-up product, h in the
// down product) — for bf16 as the CPU path does with AVX512-BF16 (many_rows_matmul's bf16 pairs),
// and as PyTorch's and llama.cpp's bf16 and fp16 paths do. With fp16 weights an activation beyond
// ±65504 becomes ±inf (fp16's range; bf16 has float's). Each product is exact in float; the sums
// are float. Same grid, tile mapping and epilogues as the CUDA-core
// tiles; a block's four warps each own a 32 x 32 quarter of its 64 x 64 output tile. The
// accumulators go through shared memory to the output, so partial tiles write only their rows and
// columns. Determinism: the same instructions in the same order on every run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "moe/cuda/expert_gemm.cuh"
#include "moe/math.hpp"

namespace moe::cuda {

constexpr int kMmaDepth = 32;     ///< k per shared-memory stage
constexpr int kMmaThreads = 128;  ///< 4 warps, 2 x 2 quarters of the 64 x 64 tile

namespace kernels {

namespace mma_tile {
constexpr int kLd = kMmaDepth + 8;     // bf16 row of a stage, padded (a multiple of 8; 80-byte rows)
constexpr int kOutLd = kTileCols + 4;  // float staging row (a multiple of 4)
template <class T16>
using AFrag = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T16, nvcuda::wmma::row_major>;
template <class T16>
using BFrag = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T16, nvcuda::wmma::col_major>;
using CFrag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

/// v rounded to nearest even in the 16-bit type.
template <class T16>
__device__ inline T16 round_to(float v);
template <>
__device__ inline __nv_bfloat16 round_to<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ inline __half round_to<__half>(float v) {
  return __float2half_rn(v);
}

/// Stage rows [0, 64) x k [k0, k0 + 32) of A, rounded to T16: a_s[r][kk] = A(r, k0 + kk), zero
/// outside rows < valid rows (row(r) < 0) and k < depth. Thread t fills 16 consecutive k of row t / 2.
template <class T16>
__device__ inline void stage_a(const float* const* rows, long long k0, long long depth, T16 (*a_s)[kLd]) {
  const int r = static_cast<int>(threadIdx.x) / 2, kk0 = static_cast<int>(threadIdx.x) % 2 * 16;
  const float* row = rows[r];
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const long long k = k0 + kk0 + i;
    a_s[r][kk0 + i] = round_to<T16>(row && k < depth ? row[k] : 0.0f);
  }
}

/// Stage columns [c0, c0 + 64) x k [k0, k0 + 32) of weights w (column c at w + c·depth) as
/// b_s[c - c0][kk], zero outside c < cols and k < depth.
template <class T16>
__device__ inline void stage_b(const T16* w, long long c0, long long cols, long long k0, long long depth,
                               T16 (*b_s)[kLd]) {
  const int c = static_cast<int>(threadIdx.x) / 2, kk0 = static_cast<int>(threadIdx.x) % 2 * 16;
  const bool in_col = c0 + c < cols;
  const T16* col = w + (c0 + c) * depth;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const long long k = k0 + kk0 + i;
    b_s[c][kk0 + i] = in_col && k < depth ? col[k] : round_to<T16>(0.0f);
  }
}

/// Copies the valid part of the 64 x 64 staging tile to out (row r at out + r·ld, `rows` rows,
/// columns c0 .. min(c0 + 64, cols)).
__device__ inline void write_tile(const float (*out_s)[kOutLd], int rows, long long c0, long long cols,
                                  float* out, long long ld) {
  for (int i = static_cast<int>(threadIdx.x); i < kTileRows * kTileCols; i += kMmaThreads) {
    const int r = i / kTileCols, c = i % kTileCols;
    if (r < rows && c0 + c < cols) out[r * ld + c0 + c] = out_s[r][c];
  }
}
}  // namespace mma_tile

/// expert_hidden_swiglu on the tensor cores (T16 = bf16 or fp16 weights): h = (x·W_up) ⊙
/// SiLU(x·W_gate) for one expert tile and 64 hidden columns, x rounded to T16. Grid as
/// expert_hidden_swiglu; kMmaThreads threads.
template <class T16>
__global__ void __launch_bounds__(kMmaThreads)
    expert_hidden_swiglu_mma(const float* x, const long long* sorted_pair, int k, DeviceExperts<T16> ex,
                             const long long* offsets, const long long* tile_offsets, float* h,
                             long long ldh) {
  using namespace mma_tile;
  ExpertTile tile{};
  if (!find_tile(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const long long m = ex.hidden[tile.expert], d = ex.d;
  const long long c0 = static_cast<long long>(blockIdx.y) * kTileCols;
  if (c0 >= m) return;
  const T16* wg = ex.gate + ex.weight_offset[tile.expert];
  const T16* wu = ex.up + ex.weight_offset[tile.expert];

  __shared__ __align__(32) T16 a_s[kTileRows][kLd];
  __shared__ __align__(32) T16 g_s[kTileCols][kLd];
  __shared__ __align__(32) T16 u_s[kTileCols][kLd];
  __shared__ __align__(32) float out_s[kTileRows][kOutLd];
  __shared__ const float* rows[kTileRows];
  const int tid = static_cast<int>(threadIdx.x);
  for (int r = tid; r < kTileRows; r += kMmaThreads)
    rows[r] = r < tile.rows ? x + sorted_pair[tile.row0 + r] / k * d : nullptr;
  __syncthreads();

  const int warp = tid / 32, wr = warp / 2 * 32, wc = warp % 2 * 32;
  CFrag acc_g[2][2], acc_u[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      nvcuda::wmma::fill_fragment(acc_g[i][j], 0.0f);
      nvcuda::wmma::fill_fragment(acc_u[i][j], 0.0f);
    }
  for (long long k0 = 0; k0 < d; k0 += kMmaDepth) {
    stage_a(rows, k0, d, a_s);
    stage_b(wg, c0, m, k0, d, g_s);
    stage_b(wu, c0, m, k0, d, u_s);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kMmaDepth; kk += 16) {
      AFrag<T16> a[2];
      BFrag<T16> g[2], u[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(a[i], &a_s[wr + 16 * i][kk], kLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        nvcuda::wmma::load_matrix_sync(g[j], &g_s[wc + 16 * j][kk], kLd);
        nvcuda::wmma::load_matrix_sync(u[j], &u_s[wc + 16 * j][kk], kLd);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          nvcuda::wmma::mma_sync(acc_g[i][j], a[i], g[j], acc_g[i][j]);
          nvcuda::wmma::mma_sync(acc_u[i][j], a[i], u[j], acc_u[i][j]);
        }
    }
    __syncthreads();
  }
  // SwiGLU on the fragments: gate and up fragments of the same tile hold the same elements.
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      for (int t = 0; t < acc_g[i][j].num_elements; ++t)
        acc_g[i][j].x[t] = acc_u[i][j].x[t] * silu(acc_g[i][j].x[t]);
      nvcuda::wmma::store_matrix_sync(&out_s[wr + 16 * i][wc + 16 * j], acc_g[i][j], kOutLd,
                                      nvcuda::wmma::mem_row_major);
    }
  __syncthreads();
  write_tile(out_s, tile.rows, c0, m, h + tile.row0 * ldh, ldh);
}

/// expert_down on the tensor cores (T16 = bf16 or fp16 weights): y_rows = h·W_down for one expert
/// tile and 64 of the d columns, h rounded to T16. Grid as expert_down; kMmaThreads threads.
template <class T16>
__global__ void __launch_bounds__(kMmaThreads)
    expert_down_mma(const float* h, long long ldh, DeviceExperts<T16> ex, const long long* offsets,
                    const long long* tile_offsets, float* y_rows) {
  using namespace mma_tile;
  ExpertTile tile{};
  if (!find_tile(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const long long m = ex.hidden[tile.expert], d = ex.d;
  const long long c0 = static_cast<long long>(blockIdx.y) * kTileCols;
  if (c0 >= d) return;
  const T16* wd = ex.down + ex.weight_offset[tile.expert];

  __shared__ __align__(32) T16 a_s[kTileRows][kLd];
  __shared__ __align__(32) T16 w_s[kTileCols][kLd];
  __shared__ __align__(32) float out_s[kTileRows][kOutLd];
  __shared__ const float* rows[kTileRows];
  const int tid = static_cast<int>(threadIdx.x);
  for (int r = tid; r < kTileRows; r += kMmaThreads)
    rows[r] = r < tile.rows ? h + (tile.row0 + r) * ldh : nullptr;
  __syncthreads();

  const int warp = tid / 32, wr = warp / 2 * 32, wc = warp % 2 * 32;
  CFrag acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  for (long long k0 = 0; k0 < m; k0 += kMmaDepth) {
    stage_a(rows, k0, m, a_s);
    stage_b(wd, c0, d, k0, m, w_s);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kMmaDepth; kk += 16) {
      AFrag<T16> a[2];
      BFrag<T16> w[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(a[i], &a_s[wr + 16 * i][kk], kLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(w[j], &w_s[wc + 16 * j][kk], kLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc[i][j], a[i], w[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      nvcuda::wmma::store_matrix_sync(&out_s[wr + 16 * i][wc + 16 * j], acc[i][j], kOutLd,
                                      nvcuda::wmma::mem_row_major);
  __syncthreads();
  write_tile(out_s, tile.rows, c0, d, y_rows + tile.row0 * d, d);
}

}  // namespace kernels
}  // namespace moe::cuda
