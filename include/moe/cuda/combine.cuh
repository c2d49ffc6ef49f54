// moe — the weighted combine of the CUDA path, formulas (2) and (6): y(t) = scale · Σ_s G_s ·
// E_s(x_t), the slots summed in order by one thread per output element (no atomics: the same bits
// on every run).
#pragma once

#include <cuda_runtime.h>

#include "moe/cuda/check.cuh"

namespace moe::cuda::kernels {

/// One block per token; threads stride over the d columns. y_rows: the experts' output rows
/// (row_of[t·k + s] for slot s of token t), d apart. Dropped slots (id -1) add nothing.
static __global__ void combine(const float* y_rows, long long d, const int* ids, const float* weights,
                               const long long* row_of, int k, float scale, float* y) {
  wait_for_previous_kernel();
  const long long t = blockIdx.x;
  for (long long j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < k; ++s) {
      const long long a = t * k + s;
      if (ids[a] < 0) continue;
      acc += weights[a] * y_rows[row_of[a] * d + j];
    }
    y[t * d + j] = acc * scale;
  }
}

}  // namespace moe::cuda::kernels
