// moe — a register of float lanes for the target ISA (AVX-512: 16, AVX2+FMA+F16C: 8, else a
// portable 8-lane fallback), with the few operations the matmul kernels need, and the exact
// widening of stored float / bfloat16 / half weights to float.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include <Eigen/Core>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>
#endif

#include "moe/core/types.hpp"

namespace moe::detail {

/// Widens one stored weight to float (exact for all three types).
inline float widen(float v) { return v; }
inline float widen(Eigen::bfloat16 v) { return static_cast<float>(v); }
inline float widen(Eigen::half v) { return static_cast<float>(v); }

/// The sum of n lanes (a power of two) in a fixed pairwise tree: lane i + lane i + n/2, ...
template <int n>
float lane_sum(float* t) {
  for (int half = n / 2; half >= 1; half /= 2)
    for (int i = 0; i < half; ++i) t[i] += t[i + half];
  return t[0];
}

#if defined(__AVX512F__)

/// A register of float lanes with the operations the kernel needs (AVX-512: 16 lanes).
struct FloatLanes {
  static constexpr int kWidth = 16;
  __m512 v;

  static FloatLanes zero() { return {_mm512_setzero_ps()}; }
  static FloatLanes load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static FloatLanes broadcast(float s) { return {_mm512_set1_ps(s)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static FloatLanes load(const Eigen::bfloat16* p) {
    // bfloat16 is the top half of a float: zero-extend to 32 bits, shift into place.
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static FloatLanes load(const Eigen::half* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  void fma(const FloatLanes& a, const FloatLanes& b) { v = _mm512_fmadd_ps(a.v, b.v, v); }
  void add(const FloatLanes& a) { v = _mm512_add_ps(v, a.v); }
  float sum() const {
    // Through memory, not _mm512_reduce_add_ps or casts/shuffles: GCC 12's headers trip
    // -Wuninitialized there (GCC bug 105593). Once per output value: the cost is nil.
    alignas(64) float t[kWidth];
    _mm512_store_ps(t, v);
    return lane_sum<kWidth>(t);
  }
};

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

/// AVX2 + FMA + F16C: 8 lanes.
struct FloatLanes {
  static constexpr int kWidth = 8;
  __m256 v;

  static FloatLanes zero() { return {_mm256_setzero_ps()}; }
  static FloatLanes load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static FloatLanes broadcast(float s) { return {_mm256_set1_ps(s)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static FloatLanes load(const Eigen::bfloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
  }
  static FloatLanes load(const Eigen::half* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  void fma(const FloatLanes& a, const FloatLanes& b) { v = _mm256_fmadd_ps(a.v, b.v, v); }
  void add(const FloatLanes& a) { v = _mm256_add_ps(v, a.v); }
  float sum() const {
    alignas(32) float t[kWidth];
    _mm256_store_ps(t, v);
    return lane_sum<kWidth>(t);
  }
};

#else

/// Portable fallback: 8 lanes in plain C++ (compilers vectorise the loops); same structure, so the
/// kernel below is written once.
struct FloatLanes {
  static constexpr int kWidth = 8;
  float v[kWidth];

  static FloatLanes zero() { return {}; }
  static FloatLanes broadcast(float s) {
    FloatLanes r;
    for (float& x : r.v) x = s;
    return r;
  }
  void store(float* p) const { std::memcpy(p, v, sizeof v); }
  template <class W>
  static FloatLanes load(const W* p) {
    FloatLanes r;
    for (int i = 0; i < kWidth; ++i) r.v[i] = widen(p[i]);
    return r;
  }
  void fma(const FloatLanes& a, const FloatLanes& b) {
    for (int i = 0; i < kWidth; ++i) v[i] = std::fma(a.v[i], b.v[i], v[i]);
  }
  void add(const FloatLanes& a) {
    for (int i = 0; i < kWidth; ++i) v[i] += a.v[i];
  }
  float sum() const {
    float t[kWidth];
    std::memcpy(t, v, sizeof t);
    return lane_sum<kWidth>(t);
  }
};

#endif

/// The last `n` < kWidth values of a row or column, zero-padded to a full register (adding zero
/// products leaves every lane's sum unchanged).
template <class W>
FloatLanes load_tail(const W* p, Index n) {
  float buf[FloatLanes::kWidth] = {};
  for (Index i = 0; i < n; ++i) buf[i] = widen(p[i]);
  return FloatLanes::load(buf);
}

}  // namespace moe::detail
