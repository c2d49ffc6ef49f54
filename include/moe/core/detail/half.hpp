// moe — IEEE binary16 and bfloat16 to float conversion (bit exact, subnormals, Inf and NaN).
#pragma once

#include <cstdint>
#include <cstring>

namespace moe::detail {

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// bfloat16 is the top half of a binary32: widen by shifting.
inline float bf16_to_float(std::uint16_t h) { return bits_to_float(static_cast<std::uint32_t>(h) << 16); }

/// IEEE 754 binary16 → binary32, exact.
inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (mant << 13));  // Inf / NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);  // ±0
  // Subnormal: value = mant · 2^-24; normalise into a binary32 exponent.
  int e = -1;
  do {
    mant <<= 1;
    ++e;
  } while ((mant & 0x400u) == 0);
  return bits_to_float(sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mant & 0x3FFu) << 13));
}

}  // namespace moe::detail

namespace moe::detail {

inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

/// binary32 → bfloat16, round to nearest, ties to even; NaN stays a (quiet) NaN.
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  u += 0x7FFFu + ((u >> 16) & 1u);  // carries into the exponent give the right rounding, Inf included
  return static_cast<std::uint16_t>(u >> 16);
}

/// binary32 → IEEE binary16, round to nearest, ties to even; overflow to ±Inf, NaN → quiet NaN,
/// values below 2^-14 to subnormals (or ±0).
inline std::uint16_t float_to_f16(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  std::uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x47800000u)  // |f| >= 2^16 (past the rounding range of 65504), Inf or NaN
    return static_cast<std::uint16_t>(sign | (a > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (a < 0x38800000u) {
    // Subnormal half: adding 0.5 (2^-1) puts the half's 10 mantissa bits, scaled by 2^24, at the
    // bottom of a float whose exponent is fixed, and the FPU's own round-to-nearest-even does
    // the rounding. 0.5 = 0x3F000000.
    const float shifted = bits_to_float(a) + 0.5f;
    return static_cast<std::uint16_t>(sign | (float_to_bits(shifted) - 0x3F000000u));
  }
  // Normal: rebias the exponent (127 → 15), then round the 13 dropped bits to nearest-even; a
  // carry out of the mantissa bumps the exponent, up to Inf for [65520, 65536).
  const std::uint32_t odd = (a >> 13) & 1u;
  a += 0xC8000000u + 0xFFFu + odd;  // 0xC8000000 = (15 - 127) << 23, modulo 2^32
  return static_cast<std::uint16_t>(sign | (a >> 13));
}

}  // namespace moe::detail
