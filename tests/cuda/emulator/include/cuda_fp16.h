// Emulation shim (tests/cuda/emulator): the half type and the conversions moe's kernels use, exact
// as CUDA's, through Eigen's half.
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "cuda_runtime.h"

struct __half {
  std::uint16_t bits;
};

inline __half __ushort_as_half(unsigned short v) { return {v}; }
inline __half __float2half_rn(float v) { return {Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(v))}; }
inline float __half2float(__half v) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(v.bits));
}
