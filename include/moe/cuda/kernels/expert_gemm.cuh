// moe — the grouped expert products of the CUDA path, over the pairs grouped by expert
// (permute.cuh): h = SwiGLU(x·W_gate, x·W_up) with the gather of each expert's token rows fused
// into the tile loads and SwiGLU into the epilogue (formula (1) per expert), then y_e = h·W_down.
//
// One kernel launch covers every expert with more than kFewRows rows (fewer take the
// matrix-vector path, expert_gemv.cuh): the grid has an upper bound of row tiles, known from the
// token count without reading the counts back, and each block finds its expert and row tile in
// tile_offsets; blocks past the last tile return. So a forward needs no device-to-host copy.
//
// These tiles are a plain shared-memory product on the CUDA cores, with FP32 accumulation of float
// activations and weights widened exactly: the float weights' path (bf16 and fp16 weights take the
// same tiles on the tensor cores, expert_mma.cuh; the kernels still accept them). Each output is
// one thread's sum over k in order (fused multiply-add): the same bits on every run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "moe/core/math.hpp"
#include "moe/cuda/arch/launch.cuh"

namespace moe::cuda {

constexpr int kTileRows = 64;   ///< token rows per block
constexpr int kTileCols = 64;   ///< output columns per block
constexpr int kTileDepth = 16;  ///< k per shared-memory stage
constexpr int kGemmThreads = 256;

namespace kernels {

__device__ inline float widen(float v) { return v; }
__device__ inline float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float widen(__half v) { return __half2float(v); }

/// Which expert a block of the grouped grid serves, and its rows [row0, row0 + rows).
struct ExpertTile {
  int expert;
  long long row0;
  int rows;
};

/// Tile number `tile` of the grouped grid of kRows-row tiles (group_by_expert's tile_rows): the
/// expert e with tile_offsets[e] <= tile < tile_offsets[e + 1] (binary search; empty experts have no
/// tiles). False past the last tile.
template <int kRows = kTileRows>
__device__ inline bool find_tile(const long long* offsets, const long long* tile_offsets, int n,
                                 long long tile, ExpertTile& out) {
  if (tile >= tile_offsets[n]) return false;
  int lo = 0, hi = n - 1;  // the largest e with tile_offsets[e] <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_offsets[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  out.expert = lo;
  out.row0 = offsets[lo] + (tile - tile_offsets[lo]) * kRows;
  const long long left = offsets[lo + 1] - out.row0;
  out.rows = static_cast<int>(left < kRows ? left : kRows);
  return true;
}

/// The expert weights, all experts in one buffer each: expert e's W_gate and W_up (d x m_e,
/// column j at + j·d) and W_down (m_e x d, column j at + j·m_e) start at weight_offset[e].
template <class W>
struct DeviceExperts {
  const W* gate;
  const W* up;
  const W* down;
  const long long* weight_offset;
  const int* hidden;  ///< m_e
  int n;
  long long d;
};

/// A thread's 4 x 4 outputs: rows ty·4 + i of the tile (those it has), columns c0 + tx·4 + j below
/// cols, value(i, j) each; row r of the output at out + r·ld.
template <class Value>
__device__ inline void write_thread_outputs(const ExpertTile& tile, int ty, int tx, long long c0,
                                            long long cols, float* out, long long ld, Value value) {
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= tile.rows) continue;
    for (int j = 0; j < 4; ++j) {
      const long long c = c0 + tx * 4 + j;
      if (c < cols) out[(tile.row0 + r) * ld + c] = value(i, j);
    }
  }
}

/// h(row, :) for the rows of one expert tile and 64 of its hidden columns:
/// h = (x·W_up) ⊙ SiLU(x·W_gate), x's rows gathered by token (row r is token sorted_pair[r] / k).
/// h: row r at h + r·ldh. Grid: (row tiles bound, ceil(max m / 64)); kGemmThreads threads.
template <class W>
__global__ void __launch_bounds__(kGemmThreads)
    expert_hidden_swiglu(const float* x, const long long* sorted_pair, int k, DeviceExperts<W> ex,
                         const long long* offsets, const long long* tile_offsets, float* h, long long ldh) {
  wait_for_previous_kernel();
  ExpertTile tile{};
  if (!find_tile(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const int m = ex.hidden[tile.expert];
  const long long c0 = static_cast<long long>(blockIdx.y) * kTileCols;
  if (c0 >= m) return;
  const long long d = ex.d;
  const W* wg = ex.gate + ex.weight_offset[tile.expert];
  const W* wu = ex.up + ex.weight_offset[tile.expert];

  __shared__ float a_s[kTileDepth][kTileRows];
  __shared__ float g_s[kTileDepth][kTileCols];
  __shared__ float u_s[kTileDepth][kTileCols];
  __shared__ long long x_row[kTileRows];  // offset of each tile row's token in x; -1: padding
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < kTileRows) x_row[tid] = tid < tile.rows ? sorted_pair[tile.row0 + tid] / k * d : -1;
  __syncthreads();

  const int load_row = tid / 4, load_k = tid % 4 * 4;  // 64 rows/columns x 16 k, 4 per thread
  const long long col = c0 + load_row;
  const int tx = tid % 16, ty = tid / 16;  // this thread's 4 x 4 outputs
  float acc_g[4][4] = {}, acc_u[4][4] = {};
  for (long long k0 = 0; k0 < d; k0 += kTileDepth) {
    for (int q = 0; q < 4; ++q) {
      const long long kk = k0 + load_k + q;
      const bool in_k = kk < d;
      a_s[load_k + q][load_row] = in_k && x_row[load_row] >= 0 ? x[x_row[load_row] + kk] : 0.0f;
      const bool in_w = in_k && col < m;
      g_s[load_k + q][load_row] = in_w ? widen(wg[col * d + kk]) : 0.0f;
      u_s[load_k + q][load_row] = in_w ? widen(wu[col * d + kk]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileDepth; ++kk) {
      float a[4], g[4], u[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = a_s[kk][ty * 4 + i];
        g[i] = g_s[kk][tx * 4 + i];
        u[i] = u_s[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc_g[i][j] = fmaf(a[i], g[j], acc_g[i][j]);
          acc_u[i][j] = fmaf(a[i], u[j], acc_u[i][j]);
        }
    }
    __syncthreads();
  }
  write_thread_outputs(tile, ty, tx, c0, m, h, ldh,
                       [&](int i, int j) { return acc_u[i][j] * silu(acc_g[i][j]); });
}

/// y_rows(row, :) = h(row, :)·W_down of the row's expert, for one expert tile and 64 of the d
/// output columns. h: row r at h + r·ldh (m_e values); y_rows: row r at y_rows + r·d.
/// Grid: (row tiles bound, ceil(d / 64)); kGemmThreads threads.
template <class W>
__global__ void __launch_bounds__(kGemmThreads)
    expert_down(const float* h, long long ldh, DeviceExperts<W> ex, const long long* offsets,
                const long long* tile_offsets, float* y_rows) {
  wait_for_previous_kernel();
  ExpertTile tile{};
  if (!find_tile(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const long long m = ex.hidden[tile.expert], d = ex.d;
  const long long c0 = static_cast<long long>(blockIdx.y) * kTileCols;
  if (c0 >= d) return;
  const W* wd = ex.down + ex.weight_offset[tile.expert];

  __shared__ float a_s[kTileDepth][kTileRows];
  __shared__ float w_s[kTileDepth][kTileCols];
  const int tid = static_cast<int>(threadIdx.x);
  const int load_row = tid / 4, load_k = tid % 4 * 4;
  const long long col = c0 + load_row;
  const bool row_in = load_row < tile.rows;
  const float* h_row = row_in ? h + (tile.row0 + load_row) * ldh : h;
  const int tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (long long k0 = 0; k0 < m; k0 += kTileDepth) {
    for (int q = 0; q < 4; ++q) {
      const long long kk = k0 + load_k + q;
      const bool in_k = kk < m;
      a_s[load_k + q][load_row] = in_k && row_in ? h_row[kk] : 0.0f;
      w_s[load_k + q][load_row] = in_k && col < d ? widen(wd[col * m + kk]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileDepth; ++kk) {
      float a[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = a_s[kk][ty * 4 + i];
        w[i] = w_s[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
    __syncthreads();
  }
  write_thread_outputs(tile, ty, tx, c0, d, y_rows, d, [&](int i, int j) { return acc[i][j]; });
}

}  // namespace kernels
}  // namespace moe::cuda
