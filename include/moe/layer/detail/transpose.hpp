// moe — a column-major float block copied into token rows: the GEMM's outputs turned into the
// rows an MoE layer's combine reads.
#pragma once

#include <algorithm>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "moe/core/types.hpp"

namespace moe::detail {

/// Row stride (in floats) for token rows of d values that a transpose writes: d plus one cache
/// line. At d = 4096 rows d apart lie 16 KB apart, so the 16 rows a 16 x 16 transpose stores fall
/// in one L1 set and alias each other's 4 KB offsets; one more line apart they do not
/// (bench/RESULTS.md, "transposes").
inline Index padded_row_stride(Index d) { return d + 16; }

#if defined(__AVX512F__)
// The shuffles of transpose_16x16, as masked forms with every lane selected: the plain intrinsics
// start from _mm512_undefined_ps, which GCC 12 reports as used uninitialized (GCC bug 105593).
// They compile to the same instructions.
constexpr __mmask16 kAllLanes = 0xFFFF;
inline __m512 unpacklo_ps(__m512 a, __m512 b) { return _mm512_mask_unpacklo_ps(a, kAllLanes, a, b); }
inline __m512 unpackhi_ps(__m512 a, __m512 b) { return _mm512_mask_unpackhi_ps(a, kAllLanes, a, b); }
template <int kImm>
__m512 shuffle_ps(__m512 a, __m512 b) {
  return _mm512_mask_shuffle_ps(a, kAllLanes, a, b, kImm);
}
template <int kImm>
__m512 shuffle_f32x4(__m512 a, __m512 b) {
  return _mm512_mask_shuffle_f32x4(a, kAllLanes, a, b, kImm);
}

/// Transposes 16 x 16 floats held in 16 registers: on return r[j] holds lane j of every input
/// register (r[j][i] = old r[i][j]); unpacks, then shuffles within and across 128-bit lanes.
inline void transpose_16x16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = shuffle_ps<0x44>(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = shuffle_ps<0xEE>(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = shuffle_ps<0x44>(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = shuffle_ps<0xEE>(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = shuffle_f32x4<0x88>(r[i], r[i + 4]);
    t[i + 4] = shuffle_f32x4<0xDD>(r[i], r[i + 4]);
    t[i + 8] = shuffle_f32x4<0x88>(r[i + 8], r[i + 12]);
    t[i + 12] = shuffle_f32x4<0xDD>(r[i + 8], r[i + 12]);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = shuffle_f32x4<0x88>(t[i], t[i + 8]);
    r[i + 8] = shuffle_f32x4<0xDD>(t[i], t[i + 8]);
  }
}
#endif

/// dst[i·ldd + j] = src[j·lds + i] for i < rows, j < cols: a column-major block (column j at
/// src + j·lds) copied into rows (row i at dst + i·ldd). An exact copy; tiles of 16 x 16, in
/// registers with AVX-512, so each source line and each destination line is touched once.
inline void transpose_to_rows(const float* src, Index lds, Index rows, Index cols, float* dst, Index ldd) {
  constexpr Index kTile = 16;
  for (Index j0 = 0; j0 < cols; j0 += kTile)
    for (Index i0 = 0; i0 < rows; i0 += kTile) {
      const Index ni = std::min(kTile, rows - i0), nj = std::min(kTile, cols - j0);
#if defined(__AVX512F__)
      if (ni == kTile && nj == kTile) {
        __m512 r[16];
        for (Index j = 0; j < kTile; ++j) r[j] = _mm512_loadu_ps(src + (j0 + j) * lds + i0);
        transpose_16x16(r);
        for (Index i = 0; i < kTile; ++i) _mm512_storeu_ps(dst + (i0 + i) * ldd + j0, r[i]);
        continue;
      }
#endif
      for (Index i = 0; i < ni; ++i)
        for (Index j = 0; j < nj; ++j) dst[(i0 + i) * ldd + j0 + j] = src[(j0 + j) * lds + i0 + i];
    }
}

}  // namespace moe::detail
