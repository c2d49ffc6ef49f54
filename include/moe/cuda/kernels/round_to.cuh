// moe — rounding float to the 16-bit weight types on the device (to nearest even): how the
// tensor-core tiles turn float activations into operands of the weights' type (expert_mma.cuh,
// expert_mma_pipelined.cuh, and the router's rounded copy of x in routing.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace moe::cuda::kernels {

/// v rounded to nearest even in the 16-bit type (fp16: beyond ±65504 becomes ±inf).
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

}  // namespace moe::cuda::kernels
