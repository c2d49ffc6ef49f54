// moe — the weighted combine of the CUDA path, formulas (2) and (6): y(t) = scale · Σ_s G_s ·
// E_s(x_t), the slots summed in order by one thread per output element (no atomics: the same bits
// on every run).
#pragma once

#include <cuda_runtime.h>

#include "moe/cuda/arch/launch.cuh"
#include "moe/cuda/kernels/routing.cuh"

namespace moe::cuda::kernels {

/// combine's threads, and the chunks of its token's row a thread takes at once.
constexpr int kCombineThreads = 256;
constexpr int kCombineChunks = 4;

/// One block per token. y_rows: the experts' output rows (row_of[t·k + s] for slot s of token t),
/// d apart; dropped slots (id -1) add nothing. Each element is the slots' products summed in slot
/// order, then scaled. A thread takes kCombineChunks chunks of V floats at once (at d = 4096,
/// every chunk of its token) and issues all their loads for a slot before it adds any, so they can
/// be in flight together (what the PTX shows; the time is unmeasured without a GPU); the slots'
/// rows and weights are read once per block. kVec: chunks of 4
/// floats, so d a multiple of 4 and y 16-byte aligned (y_rows' rows then are).
template <bool kVec>
__global__ void __launch_bounds__(kCombineThreads)
    combine(const float* y_rows, long long d, const int* ids, const float* weights, const long long* row_of,
            int k, float scale, float* y) {
  wait_for_previous_kernel();
  constexpr int V = kVec ? 4 : 1;
  __shared__ long long slot_row[kMaxTopK];  // -1: the slot was dropped
  __shared__ float slot_weight[kMaxTopK];
  const long long t = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < k) {
    const long long a = t * k + tid;
    slot_row[tid] = ids[a] < 0 ? -1 : row_of[a];
    slot_weight[tid] = weights[a];
  }
  __syncthreads();
  const long long chunks = d / V;
  for (long long c0 = tid; c0 < chunks; c0 += kCombineChunks * kCombineThreads) {
    float acc[kCombineChunks][V] = {};
    for (int s = 0; s < k; ++s) {
      const long long row = slot_row[s];
      if (row < 0) continue;
      const float w = slot_weight[s];
      // Past the row's end a chunk reads the last one instead (in_bounds; never stored).
      float v[kCombineChunks][V];
#pragma unroll
      for (int u = 0; u < kCombineChunks; ++u)
        load_chunk<V>(y_rows + row * d + in_bounds(c0 + u * kCombineThreads, chunks) * V, v[u]);
#pragma unroll
      for (int u = 0; u < kCombineChunks; ++u)
#pragma unroll
        for (int i = 0; i < V; ++i) acc[u][i] = fmaf(w, v[u][i], acc[u][i]);
    }
#pragma unroll
    for (int u = 0; u < kCombineChunks; ++u) {
      const long long c = c0 + u * kCombineThreads;
      if (c >= chunks) break;
      if constexpr (kVec) {
        *reinterpret_cast<float4*>(y + t * d + c * V) =
            float4{acc[u][0] * scale, acc[u][1] * scale, acc[u][2] * scale, acc[u][3] * scale};
      } else {
        y[t * d + c] = acc[u][0] * scale;
      }
    }
  }
}

}  // namespace moe::cuda::kernels
