// moe — the prefill path's grouped expert products on the tensor cores for bf16 and fp16 weights,
// pipelined: 128-row tiles of 128 products' columns, operands already in the weights' type and
// copied to shared memory asynchronously (copy.cuh), kPipeStages stages deep.
//
// Why a second tile kernel beside expert_mma.cuh: there, each 64 x 64 block takes its activations
// in float, rounds them as it stores a stage, and keeps one stage in flight in registers. At
// T = 2048 and 8192 a layer is arithmetic-bound (about 140 and 550 GFLOP), and that shape does too
// little per byte of shared memory and has too few copies in flight to come near the tensor
// cores' rate. Here the operands arrive in the weights' type — x rounded once by the router
// (route_tokens' x_rounded) and h written rounded by this gate-up kernel's epilogue, the same
// roundings, so the same products, as the 64-row tiles — so a stage is a plain 16-byte copy that
// runs while the warps multiply the previous ones. A block's four warps each own 64 rows x 64
// product columns (16 accumulator fragments).
//
// Requires d and every m_e to be multiples of 8 (whole 16-byte rows; DeviceMoELayer takes the
// 64-row tiles otherwise). Determinism: the same instructions in the same order on every run, and
// each k step adds to the accumulators in k order, as the 64-row tiles do.
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
#include "moe/cuda/kernels/expert_mma.cuh"
#include "moe/cuda/kernels/round_to.cuh"

namespace moe::cuda {

constexpr int kPipeTileRows = 128;  ///< token rows per tile (group_by_expert's tile_rows for these kernels)
constexpr int kPipeThreads = 128;   ///< 4 warps, 2 x 2, each 64 rows x 64 product columns

namespace kernels {

namespace pipe {
constexpr int kCols = 128;           // product columns per block: 64 gate + 64 up, or 128 of y
constexpr int kDepth = 32;           // k per stage
constexpr int kStages = 3;           // stages in shared memory: two in flight while one is multiplied
constexpr int kLd = kDepth + 8;      // a stage row: 40 values, 80 bytes (a fragment's 8-row reads hit
                                     // distinct banks; a multiple of 8 values and 16 bytes, as WMMA and
                                     // the copies need)
constexpr int kChunks = kDepth / 8;  // 16-byte chunks per stage row
constexpr int kRowsPerPass = kPipeThreads / kChunks;         // 32
constexpr int kLoads = kPipeTileRows / kRowsPerPass;         // a thread's rows: 4
constexpr int kStageValues = (kPipeTileRows + kCols) * kLd;  // A rows, then B rows
constexpr int kScratchLd = 20;  // a warp's 16 x 16 float staging tile for the epilogue
static_assert(kCols == kPipeTileRows, "a thread copies the same rows of A and of B");
static_assert(kDepth % 16 == 0 && kPipeThreads % kChunks == 0 && kPipeTileRows % kRowsPerPass == 0);

using mma_tile::AFrag;  // the 64-row tiles' WMMA fragment types (expert_mma.cuh)
using mma_tile::BFrag;
using mma_tile::CFrag;

/// The rows this thread copies into every stage: A row r = tid / kChunks + kRowsPerPass·i (a token
/// row of the tile, k contiguous) and B row r (a weight column, k contiguous), each null past the
/// tile's rows or the weights' columns (copied as zeros). any: a valid address for those.
template <class T16>
struct StageRows {
  const T16* a[kLoads];
  const T16* b[kLoads];
  const T16* any;
};

/// Starts the copies of k [k0, k0 + kDepth) of this thread's rows into `stage`; chunks at or past
/// depth (a multiple of 8: a chunk is all in or all out) are zeros.
template <class T16>
__device__ inline void copy_stage(T16* stage, const StageRows<T16>& rows, long long k0, long long depth) {
  const int tid = static_cast<int>(threadIdx.x);
  const int r0 = tid / kChunks, kk = tid % kChunks * 8;
  const long long k = k0 + kk;
#pragma unroll
  for (int i = 0; i < kLoads; ++i) {
    const int r = r0 + kRowsPerPass * i;
    const bool a_in = rows.a[i] && k < depth, b_in = rows.b[i] && k < depth;
    copy16_async(stage + r * kLd + kk, a_in ? rows.a[i] + k : rows.any, a_in);
    copy16_async(stage + (kPipeTileRows + r) * kLd + kk, b_in ? rows.b[i] + k : rows.any, b_in);
  }
}

/// acc[i][j] += A rows wr + 16i (16 x kDepth) · B rows b_row[j] (kDepth x 16, as columns) of one
/// stage, in k order.
template <class T16>
__device__ inline void multiply_stage(const T16* stage, int wr, const int (&b_row)[4], CFrag (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < kDepth; kk += 16) {
    AFrag<T16> a[4];
    BFrag<T16> b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) nvcuda::wmma::load_matrix_sync(a[i], stage + (wr + 16 * i) * kLd + kk, kLd);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      nvcuda::wmma::load_matrix_sync(b[j], stage + (kPipeTileRows + b_row[j]) * kLd + kk, kLd);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
  }
}

/// The block's products over k [0, depth): kStages stages of shared memory, kStages - 1 of them
/// being copied while one is multiplied. On return every copy has landed and every warp has left
/// the stages, so the epilogue may reuse the shared memory.
template <class T16>
__device__ inline void multiply_tiles(T16* smem, const StageRows<T16>& rows, long long depth, int wr,
                                      const int (&b_row)[4], CFrag (&acc)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  const long long steps = (depth + kDepth - 1) / kDepth;
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) copy_stage(smem + s * kStageValues, rows, s * kDepth, depth);
    commit_copies();  // one group per stage, empty or not: the wait below counts groups
  }
  for (long long s = 0; s < steps; ++s) {
    // Committed so far: kStages - 1 + s groups, stage s's the (s+1)-th: at most kStages - 2 newer.
    wait_copies<kStages - 2>();
    // Everyone's copies of stage s are visible, and every warp is done with stage s - 1, whose
    // buffer the next copy reuses.
    __syncthreads();
    const long long next = s + kStages - 1;
    if (next < steps) copy_stage(smem + next % kStages * kStageValues, rows, next * kDepth, depth);
    commit_copies();
    multiply_stage(smem + s % kStages * kStageValues, wr, b_row, acc);
  }
  wait_copies<0>();
  __syncthreads();
}

/// Writes a warp's 16 x 16 accumulator tile f, element (i, j) the output (r0 + i, c0 + j), by
/// rows: f goes through the warp's scratch, then lane l hands row l / 2, columns 8·(l % 2) .. + 8,
/// to write(r, c, v) if r < rows and c < cols (cols a multiple of 8: the 8 are all in or all out).
template <class Write>
__device__ inline void write_fragment(float* scratch, const CFrag& f, long long r0, long long c0,
                                      long long rows, long long cols, Write write) {
  nvcuda::wmma::store_matrix_sync(scratch, f, kScratchLd, nvcuda::wmma::mem_row_major);
  __syncwarp();
  const int lane = static_cast<int>(threadIdx.x % 32), row = lane / 2, col = lane % 2 * 8;
  float v[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = scratch[row * kScratchLd + col + e];
  __syncwarp();  // every lane has read the scratch before the next fragment overwrites it
  if (r0 + row < rows && c0 + col < cols) write(r0 + row, c0 + col, v);
}
}  // namespace pipe

/// The dynamic shared memory both kernels need: kStages stages of A and B rows (61440 bytes, over
/// the 48 KB a launch gets without cudaFuncSetAttribute).
constexpr int kPipeSharedBytes = pipe::kStages * pipe::kStageValues * 2;
static_assert(kPipeSharedBytes >= (kPipeThreads / 32) * 16 * pipe::kScratchLd * 4,
              "the epilogue's scratch fits in the stages");

/// h = (x·W_up) ⊙ SiLU(x·W_gate), formula (1), for one 128-row expert tile and 64 hidden columns,
/// on the tensor cores: x_rounded is x in T16 (T x d, route_tokens' rounded copy), gathered by token;
/// h (T16, row stride ldh, a multiple of 8) is written rounded, as the down product takes it.
/// Grid: (an upper bound of 128-row tiles, ceil(max m_e / 64)); kPipeThreads threads;
/// kPipeSharedBytes of dynamic shared memory. d and every m_e multiples of 8.
template <class T16>
__global__ void __launch_bounds__(kPipeThreads)
    expert_hidden_swiglu_pipelined(const T16* x_rounded, const long long* sorted_pair, int k,
                                   DeviceExperts<T16> ex, const long long* offsets,
                                   const long long* tile_offsets, T16* h, long long ldh) {
  wait_for_previous_kernel();
  using namespace pipe;
  ExpertTile tile{};
  if (!find_tile<kPipeTileRows>(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const long long m = ex.hidden[tile.expert], d = ex.d;
  const long long c0 = static_cast<long long>(blockIdx.y) * (kCols / 2);
  if (c0 >= m) return;
  const T16* wg = ex.gate + ex.weight_offset[tile.expert];
  const T16* wu = ex.up + ex.weight_offset[tile.expert];

  // B rows 0..63: gate columns c0 .. c0 + 63; rows 64..127: the same up columns.
  const int tid = static_cast<int>(threadIdx.x);
  StageRows<T16> rows{};
  rows.any = wg;
#pragma unroll
  for (int i = 0; i < kLoads; ++i) {
    const int r = tid / kChunks + kRowsPerPass * i;
    rows.a[i] = r < tile.rows ? x_rounded + sorted_pair[tile.row0 + r] / k * d : nullptr;
    const long long col = c0 + r % (kCols / 2);
    rows.b[i] = col < m ? (r < kCols / 2 ? wg : wu) + col * d : nullptr;
  }
  const int warp = tid / 32, wr = warp / 2 * 64, wc = warp % 2 * 32;
  const int b_row[4] = {wc, wc + 16, kCols / 2 + wc, kCols / 2 + wc + 16};  // gate, gate, up, up
  auto* smem = reinterpret_cast<T16*>(dynamic_shared());
  CFrag acc[4][4];
  multiply_tiles(smem, rows, d, wr, b_row, acc);

  // SwiGLU on the fragments (gate and up fragments of the same tile hold the same elements), then
  // each lane writes 8 rounded values of a row: one 16-byte store (m a multiple of 8).
  float* scratch = reinterpret_cast<float*>(smem) + warp * 16 * kScratchLd;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      CFrag hf;
      for (int t = 0; t < hf.num_elements; ++t) hf.x[t] = acc[i][j + 2].x[t] * silu(acc[i][j].x[t]);
      write_fragment(scratch, hf, wr + 16 * i, c0 + wc + 16 * j, tile.rows, m,
                     [&](long long r, long long c, const float(&v)[8]) {
                       T16 out[8];
#pragma unroll
                       for (int e = 0; e < 8; ++e) out[e] = round_to<T16>(v[e]);
                       uint4 packed;
                       memcpy(&packed, out, sizeof packed);
                       store16(h + (tile.row0 + r) * ldh + c, packed);
                     });
    }
}

/// y_rows = h·W_down for one 128-row expert tile and 128 of the d columns, on the tensor cores: h
/// in T16 as expert_hidden_swiglu_pipelined wrote it. Grid: (the same tiles, ceil(d / 128));
/// kPipeThreads threads; kPipeSharedBytes of dynamic shared memory. d and every m_e multiples of 8.
template <class T16>
__global__ void __launch_bounds__(kPipeThreads)
    expert_down_pipelined(const T16* h, long long ldh, DeviceExperts<T16> ex, const long long* offsets,
                          const long long* tile_offsets, float* y_rows) {
  wait_for_previous_kernel();
  using namespace pipe;
  ExpertTile tile{};
  if (!find_tile<kPipeTileRows>(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const long long m = ex.hidden[tile.expert], d = ex.d;
  const long long c0 = static_cast<long long>(blockIdx.y) * kCols;
  if (c0 >= d) return;
  const T16* wd = ex.down + ex.weight_offset[tile.expert];

  const int tid = static_cast<int>(threadIdx.x);
  StageRows<T16> rows{};
  rows.any = wd;
#pragma unroll
  for (int i = 0; i < kLoads; ++i) {
    const int r = tid / kChunks + kRowsPerPass * i;
    rows.a[i] = r < tile.rows ? h + (tile.row0 + r) * ldh : nullptr;
    rows.b[i] = c0 + r < d ? wd + (c0 + r) * m : nullptr;
  }
  const int warp = tid / 32, wr = warp / 2 * 64, wc = warp % 2 * 64;
  const int b_row[4] = {wc, wc + 16, wc + 32, wc + 48};
  auto* smem = reinterpret_cast<T16*>(dynamic_shared());
  CFrag acc[4][4];
  multiply_tiles(smem, rows, m, wr, b_row, acc);

  float* scratch = reinterpret_cast<float*>(smem) + warp * 16 * kScratchLd;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      write_fragment(scratch, acc[i][j], wr + 16 * i, c0 + wc + 16 * j, tile.rows, d,
                     [&](long long r, long long c, const float(&v)[8]) {
                       uint4 packed[2];
                       memcpy(packed, v, sizeof packed);
                       float* out = y_rows + (tile.row0 + r) * d + c;
                       store16(out, packed[0]);
                       store16(out + 4, packed[1]);
                     });
}

}  // namespace kernels
}  // namespace moe::cuda
