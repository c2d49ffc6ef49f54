// moe — the prefill path of the CUDA grouped expert products for bf16 and fp16 weights: the 64-row
// tiles of expert_gemm.cuh on the tensor cores (WMMA, 16-bit x 16-bit products, float accumulation).
// They take any d and m_e; where both are multiples of 8 the layer takes the pipelined 128-row
// tiles of expert_mma_pipelined.cuh instead (TileKernels::k64 still picks these, for comparison).
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

#include <cstring>

#include "moe/core/math.hpp"
#include "moe/cuda/arch/copy.cuh"
#include "moe/cuda/arch/launch.cuh"
#include "moe/cuda/kernels/expert_gemm.cuh"
#include "moe/cuda/kernels/round_to.cuh"

namespace moe::cuda {

constexpr int kMmaDepth = 32;     ///< k per shared-memory stage
constexpr int kMmaThreads = 128;  ///< 4 warps, 2 x 2 quarters of the 64 x 64 tile
static_assert(kMmaThreads == 2 * kTileRows && kMmaThreads == 2 * kTileCols && kMmaDepth == 32,
              "a stage is two threads per row or column, 16 k each");

namespace kernels {

namespace mma_tile {
constexpr int kLd = kMmaDepth + 8;     // bf16 row of a stage, padded (a multiple of 8; 80-byte rows)
constexpr int kOutLd = kTileCols + 4;  // float staging row (a multiple of 4)
template <class T16>
using AFrag = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T16, nvcuda::wmma::row_major>;
template <class T16>
using BFrag = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T16, nvcuda::wmma::col_major>;
using CFrag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

/// A thread's share of one stage of A, rows [0, 64) x k [k0, k0 + 32): 16 consecutive k of row
/// threadIdx / 2, held in registers between the global loads and the shared-memory stores, so the
/// next stage's loads are in flight while the tensor cores work on this one. Zero outside the
/// valid rows (row pointer null) and k < depth. kVec: 16-byte loads (depth a multiple of 4, rows
/// 16-byte aligned); otherwise one float at a time.
template <bool kVec>
struct AStage {
  float v[16];

  __device__ void load(const float* const* rows, long long k0, long long depth) {
    const int kk0 = static_cast<int>(threadIdx.x) % 2 * 16;
    const float* row = rows[threadIdx.x / 2];
#pragma unroll
    for (int i = 0; i < 16; i += 4) {
      const long long k = k0 + kk0 + i;
      if (kVec && row && k + 4 <= depth) {
        const float4 q = __ldg(reinterpret_cast<const float4*>(row + k));
        v[i] = q.x, v[i + 1] = q.y, v[i + 2] = q.z, v[i + 3] = q.w;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[i + j] = row && k + j < depth ? row[k + j] : 0.0f;
      }
    }
  }
  /// a_s[r][kk] = the loaded values rounded to T16.
  template <class T16>
  __device__ void store(T16 (*a_s)[kLd]) const {
    const int r = static_cast<int>(threadIdx.x) / 2, kk0 = static_cast<int>(threadIdx.x) % 2 * 16;
#pragma unroll
    for (int i = 0; i < 16; ++i) a_s[r][kk0 + i] = round_to<T16>(v[i]);
  }
};

/// A thread's share of one stage of weights w (column c at w + c·depth), columns [c0, c0 + 64) x
/// k [k0, k0 + 32): 16 consecutive k of column c0 + threadIdx / 2, as 32 bytes held in registers
/// (see AStage); zero outside c < cols and k < depth. kVec: 16-byte loads (depth a multiple of 8,
/// w 16-byte aligned).
template <bool kVec, class T16>
struct BStage {
  uint4 v[2];

  __device__ void load(const T16* w, long long c0, long long cols, long long k0, long long depth) {
    const int c = static_cast<int>(threadIdx.x) / 2, kk0 = static_cast<int>(threadIdx.x) % 2 * 16;
    const T16* col = c0 + c < cols ? w + (c0 + c) * depth : nullptr;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const long long k = k0 + kk0 + 8 * i;
      if (kVec && col && k + 8 <= depth) {
        v[i] = __ldg(reinterpret_cast<const uint4*>(col + k));
      } else {
        T16 e[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) e[j] = col && k + j < depth ? col[k + j] : round_to<T16>(0.0f);
        memcpy(&v[i], e, sizeof e);
      }
    }
  }
  /// b_s[c - c0][kk] = the loaded values (16-byte stores: a row of kLd values is 80 bytes).
  __device__ void store(T16 (*b_s)[kLd]) const {
    const int c = static_cast<int>(threadIdx.x) / 2, kk0 = static_cast<int>(threadIdx.x) % 2 * 16;
#pragma unroll
    for (int i = 0; i < 2; ++i) store16(&b_s[c][kk0 + 8 * i], v[i]);
  }
};

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
/// One function past 60 lines on purpose: its phases share registers and barriers, and how a
/// split kernel is compiled (registers, spills) can only be checked on a GPU.
template <class T16, bool kVec>
__global__ void __launch_bounds__(kMmaThreads)
    // NOLINTNEXTLINE(readability-function-size): one kernel, as its comment says
    expert_hidden_swiglu_mma(const float* x, const long long* sorted_pair, int k, DeviceExperts<T16> ex,
                             const long long* offsets, const long long* tile_offsets, float* h,
                             long long ldh) {
  wait_for_previous_kernel();
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
  AStage<kVec> a_next;
  BStage<kVec, T16> g_next, u_next;
  a_next.load(rows, 0, d);
  g_next.load(wg, c0, m, 0, d);
  u_next.load(wu, c0, m, 0, d);
  for (long long k0 = 0; k0 < d; k0 += kMmaDepth) {
    a_next.store(a_s);
    g_next.store(g_s);
    u_next.store(u_s);
    __syncthreads();
    if (k0 + kMmaDepth < d) {  // the next stage's loads, in flight during this stage's products
      a_next.load(rows, k0 + kMmaDepth, d);
      g_next.load(wg, c0, m, k0 + kMmaDepth, d);
      u_next.load(wu, c0, m, k0 + kMmaDepth, d);
    }
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
template <class T16, bool kVec>
__global__ void __launch_bounds__(kMmaThreads)
    expert_down_mma(const float* h, long long ldh, DeviceExperts<T16> ex, const long long* offsets,
                    const long long* tile_offsets, float* y_rows) {
  wait_for_previous_kernel();
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
  AStage<kVec> a_next;
  BStage<kVec, T16> w_next;
  a_next.load(rows, 0, m);
  w_next.load(wd, c0, d, 0, m);
  for (long long k0 = 0; k0 < m; k0 += kMmaDepth) {
    a_next.store(a_s);
    w_next.store(w_s);
    __syncthreads();
    if (k0 + kMmaDepth < m) {
      a_next.load(rows, k0 + kMmaDepth, m);
      w_next.load(wd, c0, d, k0 + kMmaDepth, m);
    }
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
