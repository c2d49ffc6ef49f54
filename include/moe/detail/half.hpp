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
