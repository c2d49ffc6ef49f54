// Emulation shim (tests/cuda/emulator): the bf16 type and conversions moe's kernels use, with the
// bits and rounding (to nearest even) of CUDA's, through Eigen's bfloat16.
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "cuda_runtime.h"

struct __nv_bfloat16 {
  std::uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 v) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(v.bits));
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  return {Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(v))};
}
