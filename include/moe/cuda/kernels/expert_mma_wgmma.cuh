// moe — the prefill path's grouped expert products on Hopper's warpgroup tensor-core instruction
// (wgmma.mma_async, sm_90a) for bf16 and fp16 weights: the pipelined tiles' shape (128-row tiles of
// 128 products' columns, the operands already in the weights' type, copied to shared memory by
// cp.async, kStages stages deep) with each 16-deep k step issued as two m64n128k16 products by the
// block's one warpgroup, both operands read by the tensor cores from shared memory.
//
// Why a third tile kernel: expert_mma_pipelined.cuh goes through WMMA, which on sm_90 compiles to
// the warp-level HMMA of Ampere, about half the rate of Hopper's warpgroup products; at T = 2048
// and 8192 the layer is arithmetic-bound (about 140 and 550 GFLOP) and the targets need about
// 310–350 TFLOP/s. Opt-in (TileKernels::kWgmma) until a GPU has timed it against the WMMA tiles.
//
// Shared memory: each stage holds A's 128 token rows, then B's 128 weight columns, kDepth values
// of k each, in wgmma's K-major layout without swizzling: core matrices of 8 rows x 16 bytes
// (128 contiguous bytes), the 8 of a row group's k one after another (kCoreBytes apart: the
// descriptor's leading byte offset), the row groups kGroupBytes apart (its stride byte offset).
// A thread's 16-byte copies of a row group's chunk land in 8 different 16-byte slots of 128
// bytes, so a copy instruction's 8-thread phases write distinct banks.
//
// Same numerics as the other tiles: the same rounded operands, each element's k in 16-deep steps
// in k order into float accumulators (the CPU emulator sums each step in k order: there the three
// tile kinds agree to the bit). Determinism: the same instructions in the same order on every run.
// Requires d and every m_e to be multiples of 8, as the pipelined tiles do.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moe/core/math.hpp"
#include "moe/cuda/arch/copy.cuh"
#include "moe/cuda/arch/launch.cuh"
#include "moe/cuda/arch/wgmma.cuh"
#include "moe/cuda/check.cuh"
#include "moe/cuda/kernels/expert_gemm.cuh"
#include "moe/cuda/kernels/expert_mma_pipelined.cuh"
#include "moe/cuda/kernels/round_to.cuh"

namespace moe::cuda {
namespace kernels {

namespace wg {
constexpr int kDepth = 64;                                 // k per stage: 8 core matrices across
constexpr int kStages = 3;                                 // two stages in flight while one is multiplied
constexpr int kStageRows = kPipeTileRows + pipe::kCols;    // A's 128 rows, then B's 128
constexpr int kCoreBytes = 128;                            // 8 rows x 16 bytes (leading byte offset)
constexpr int kGroupBytes = kDepth / 8 * kCoreBytes;       // an 8-row group (stride byte offset): 1024
constexpr int kStageBytes = kStageRows / 8 * kGroupBytes;  // 32 KB
// A (and B) rows a thread copies into a stage: 8, one 16-byte chunk of each.
constexpr int kRowsPerThread = kPipeTileRows * kDepth / 8 / kPipeThreads;
constexpr int kAccum = pipe::kCols / 2;  // a thread's floats of one m64n128 product
static_assert(kPipeThreads == 128, "one warpgroup per block");

/// The rows this thread copies into every stage: A row stage_row(i) (a token row of the tile, k
/// contiguous) and B row stage_row(i) (a weight column), each null past the tile's rows or the
/// weights' columns (copied as zeros). any: a valid address for those.
template <class T16>
struct StageRows {
  const T16* a[kRowsPerThread];
  const T16* b[kRowsPerThread];
  const T16* any;
};

/// Row i of this thread's rows (of A, and of B): thread t copies 16-byte chunk t / 8 % 8 of rows
/// t % 8 + 8·(t / 64) + 16·i, so the 8 threads of a copy phase fill one core matrix.
__device__ inline int stage_row(int i) {
  const int tid = static_cast<int>(threadIdx.x);
  return tid % 8 + 8 * (tid / 64) + 16 * i;
}

/// The byte offset of row r's 16-byte chunk c (values 8c .. 8c + 7 of the stage's k) in a stage.
__host__ __device__ constexpr int stage_offset(int r, int c) {
  return r / 8 * kGroupBytes + c * kCoreBytes + r % 8 * 16;
}

/// Starts the copies of k [k0, k0 + kDepth) of this thread's rows into `stage`; chunks at or past
/// depth (a multiple of 8) are zeros.
template <class T16>
__device__ inline void copy_stage(unsigned char* stage, const StageRows<T16>& rows, long long k0,
                                  long long depth) {
  const int c = static_cast<int>(threadIdx.x) / 8 % 8;
  const long long k = k0 + 8 * c;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = stage_row(i);
    const bool a_in = rows.a[i] && k < depth, b_in = rows.b[i] && k < depth;
    copy16_async(stage + stage_offset(r, c), a_in ? rows.a[i] + k : rows.any, a_in);
    copy16_async(stage + stage_offset(kPipeTileRows + r, c), b_in ? rows.b[i] + k : rows.any, b_in);
  }
}

#if MOE_CUDA_WGMMA
/// The shared memory matrix descriptor of the K-major, unswizzled operand whose first core matrix
/// is at p: start address / 16, leading byte offset kCoreBytes / 16, stride byte offset
/// kGroupBytes / 16, base offset 0, swizzle mode 0 (none).
__device__ inline std::uint64_t descriptor(const unsigned char* p) {
  const std::uint64_t address = shared_address(p);
  return (address >> 4 & 0x3fff) | std::uint64_t{kCoreBytes >> 4} << 16 |
         std::uint64_t{kGroupBytes >> 4} << 32;
}

/// The block's products over k [0, depth): acc[h] holds rows 64h .. 64h + 63 of the tile (only
/// acc[0] when the tile has at most 64 rows, kTwo false: a template parameter, since a branch
/// between the products makes ptxas fence each one, C7519). kStages stages of shared memory,
/// kStages - 1 being copied while the tensor cores read one. On return every product is done;
/// the epilogues work from registers, so no barrier follows.
template <bool kTwo, class T16>
__device__ inline void multiply_tiles(unsigned char* smem, const StageRows<T16>& rows, long long depth,
                                      float (&acc)[2][kAccum]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int i = 0; i < kAccum; ++i) acc[h][i] = 0.0f;
  const long long steps = (depth + kDepth - 1) / kDepth;
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) copy_stage(smem + s * kStageBytes, rows, s * kDepth, depth);
    commit_copies();  // one group per stage, empty or not: the wait below counts groups
  }
  for (long long s = 0; s < steps; ++s) {
    // Committed so far: kStages - 1 + s groups, stage s's the (s+1)-th: at most kStages - 2 newer.
    wait_copies<kStages - 2>();
    fence_async_proxy();
    // Everyone's copies of stage s are visible to the tensor cores, and the products of stage
    // s - 1, whose buffer the next copy reuses, are done (each thread waited for them below).
    __syncthreads();
    const long long next = s + kStages - 1;
    if (next < steps) copy_stage(smem + next % kStages * kStageBytes, rows, next * kDepth, depth);
    commit_copies();
    const unsigned char* stage = smem + s % kStages * kStageBytes;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < kAccum; ++i) fence_operand(acc[h][i]);
    fence_products();
#pragma unroll
    for (int kk = 0; kk < kDepth / 16; ++kk) {
      const std::uint64_t b = descriptor(stage + stage_offset(kPipeTileRows, 2 * kk));
      product_async<T16>(acc[0], descriptor(stage + stage_offset(0, 2 * kk)), b);
      if constexpr (kTwo) product_async<T16>(acc[1], descriptor(stage + stage_offset(64, 2 * kk)), b);
    }
    commit_products();
    wait_products<0>();
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < kAccum; ++i) fence_operand(acc[h][i]);
  }
  wait_copies<0>();  // only empty groups remain (stages past the last), so this waits for nothing
}

/// multiply_tiles for a tile of `rows` token rows: one 64-row half, or both.
template <class T16>
__device__ inline void multiply_tile(unsigned char* smem, const StageRows<T16>& rows, long long depth,
                                     long long tile_rows, float (&acc)[2][kAccum]) {
  if (tile_rows > 64)
    multiply_tiles<true>(smem, rows, depth, acc);
  else
    multiply_tiles<false>(smem, rows, depth, acc);
}

/// Row (in the tile) and product column of this thread's accumulator i of acc[h]: wgmma's
/// m64nNk16 accumulator layout, warp w of the warpgroup holding rows 16w .. 16w + 15.
__device__ inline int accum_row(int h, int i) {
  const int tid = static_cast<int>(threadIdx.x);
  return 64 * h + 16 * (tid / 32) + tid % 32 / 4 + 8 * (i / 2 % 2);
}
__device__ inline int accum_col(int i) {
  return 8 * (i / 4) + 2 * (static_cast<int>(threadIdx.x) % 4) + i % 2;
}
#endif  // MOE_CUDA_WGMMA

}  // namespace wg

/// The dynamic shared memory of both wgmma kernels: kStages stages of 32 KB (over the 48 KB a
/// launch gets without cudaFuncSetAttribute; two blocks fit an SM's 228 KB).
constexpr int kWgmmaSharedBytes = wg::kStages * wg::kStageBytes;

/// Writes 1 to *compiled if this binary's code for the running GPU has the wgmma kernels (an
/// sm_90a build on a compute capability 9.0 GPU), else 0.
static __global__ void wgmma_compiled(int* compiled) { *compiled = MOE_CUDA_WGMMA; }

/// expert_hidden_swiglu_pipelined's work (formula (1) for one 128-row expert tile and 64 hidden
/// columns, h written rounded to T16) on wgmma. Grid, threads and arguments as there;
/// kWgmmaSharedBytes of dynamic shared memory.
template <class T16>
__global__ void __launch_bounds__(kPipeThreads)
    expert_hidden_swiglu_wgmma(const T16* x_rounded, const long long* sorted_pair, int k,
                               DeviceExperts<T16> ex, const long long* offsets, const long long* tile_offsets,
                               T16* h, long long ldh) {
  wait_for_previous_kernel();
#if MOE_CUDA_WGMMA
  using namespace wg;
  ExpertTile tile{};
  if (!find_tile<kPipeTileRows>(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const long long m = ex.hidden[tile.expert], d = ex.d;
  const long long c0 = static_cast<long long>(blockIdx.y) * (pipe::kCols / 2);
  if (c0 >= m) return;
  const T16* w_gate = ex.gate + ex.weight_offset[tile.expert];
  const T16* w_up = ex.up + ex.weight_offset[tile.expert];

  // B rows 0..63: gate columns c0 .. c0 + 63; rows 64..127: the same up columns.
  StageRows<T16> rows{};
  rows.any = w_gate;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = stage_row(i);
    rows.a[i] = r < tile.rows ? x_rounded + sorted_pair[tile.row0 + r] / k * d : nullptr;
    const long long col = c0 + r % (pipe::kCols / 2);
    rows.b[i] = col < m ? (r < pipe::kCols / 2 ? w_gate : w_up) + col * d : nullptr;
  }
  float acc[2][kAccum];
  multiply_tile(dynamic_shared(), rows, d, tile.rows, acc);

  // Gate column j is product column j, up column j is 64 + j: accumulators i and i + kAccum / 2
  // of the same thread. Each thread writes pairs of adjacent h values (m a multiple of 8).
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int i = 0; i < kAccum / 2; i += 2) {
      const int r = accum_row(half, i);
      const long long c = c0 + accum_col(i);
      if (r >= tile.rows || c >= m) continue;
      const float* a = acc[half];
      store_pair(h + (tile.row0 + r) * ldh + c, round_to<T16>(a[i + kAccum / 2] * silu(a[i])),
                 round_to<T16>(a[i + 1 + kAccum / 2] * silu(a[i + 1])));
    }
#else
  (void)x_rounded, (void)sorted_pair, (void)k, (void)ex, (void)offsets, (void)tile_offsets, (void)h,
      (void)ldh;
  __trap();  // not an sm_90a build: DeviceMoELayer refuses TileKernels::kWgmma
#endif
}

/// expert_down_pipelined's work (y_rows = h·W_down for one 128-row expert tile and 128 of the d
/// columns) on wgmma. Grid, threads and arguments as there; kWgmmaSharedBytes of dynamic shared
/// memory.
template <class T16>
__global__ void __launch_bounds__(kPipeThreads)
    expert_down_wgmma(const T16* h, long long ldh, DeviceExperts<T16> ex, const long long* offsets,
                      const long long* tile_offsets, float* y_rows) {
  wait_for_previous_kernel();
#if MOE_CUDA_WGMMA
  using namespace wg;
  ExpertTile tile{};
  if (!find_tile<kPipeTileRows>(offsets, tile_offsets, ex.n, blockIdx.x, tile)) return;
  const long long m = ex.hidden[tile.expert], d = ex.d;
  const long long c0 = static_cast<long long>(blockIdx.y) * pipe::kCols;
  if (c0 >= d) return;
  const T16* wd = ex.down + ex.weight_offset[tile.expert];

  StageRows<T16> rows{};
  rows.any = wd;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = stage_row(i);
    rows.a[i] = r < tile.rows ? h + (tile.row0 + r) * ldh : nullptr;
    rows.b[i] = c0 + r < d ? wd + (c0 + r) * m : nullptr;
  }
  float acc[2][kAccum];
  multiply_tile(dynamic_shared(), rows, m, tile.rows, acc);

#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int i = 0; i < kAccum; i += 2) {
      const int r = accum_row(half, i);
      const long long c = c0 + accum_col(i);
      if (r >= tile.rows || c >= d) continue;
      store_pair(y_rows + (tile.row0 + r) * d + c, acc[half][i], acc[half][i + 1]);
    }
#else
  (void)h, (void)ldh, (void)ex, (void)offsets, (void)tile_offsets, (void)y_rows;
  __trap();  // not an sm_90a build: DeviceMoELayer refuses TileKernels::kWgmma
#endif
}

}  // namespace kernels

/// Whether the current GPU runs this binary's wgmma kernels (TileKernels::kWgmma): a compute
/// capability 9.0 GPU, and sm_90a code for it in the binary. Asks the GPU: a launch and a
/// synchronising copy.
inline bool wgmma_available() {
  int device = 0;
  MOE_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major != 9 || prop.minor != 0) return false;  // sm_90a code runs on 9.0 alone
  DeviceBuffer<int> flag(1);
  launch(kernels::wgmma_compiled, 1, 1, nullptr, flag.data());
  int compiled = 0;
  MOE_CUDA_CHECK(cudaMemcpy(&compiled, flag.data(), sizeof compiled, cudaMemcpyDeviceToHost));
  return compiled == 1;
}

}  // namespace moe::cuda
