// moe — moving token rows in and out of the FFN scratch: the gather of (scaled) token rows into
// the layout of scratch_layout.hpp, packed where the kernels read packed activations, and the
// fused multiply-add of an output row into a token's result (the MoE combine).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/detail/float_lanes.hpp"
#include "moe/layer/detail/many_rows_matmul.hpp"
#include "moe/layer/detail/scratch_layout.hpp"
#include "moe/layer/detail/transpose.hpp"

namespace moe::detail {

/// Rows per gather task (gather_scratch_rows).
constexpr Index kGatherPanel = 16;
static_assert(!kPackTokenTiles || kGatherPanel == kTokenTileRows, "a gather panel is one token tile");

#if defined(__AVX512F__)
/// Depths [k0, k0 + 16) of 16 token rows, row i scaled by f[i] (a null row: zeros), written
/// token-minor: depth k0 + j of row i at dst[j·ldd + i]. One 16 x 16 transpose in registers where
/// the scalar copy loads and stores each value alone (bench/RESULTS.md, "gather"). The same
/// products as the scalar copy: f[i] · value, rounded once.
inline void gather_16x16(const float* const* s, const float* f, Index k0, float* dst, Index ldd) {
  __m512 r[16];
  for (int i = 0; i < 16; ++i)
    r[i] = s[i] ? _mm512_mul_ps(_mm512_set1_ps(f[i]), _mm512_loadu_ps(s[i] + k0)) : _mm512_setzero_ps();
  transpose_16x16(r);
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + j * ldd, r[j]);
}
#endif

/// Few rows (row-major scratch): row i of dst = scale(i) · src_row(i), for the rows of the
/// panels [first, last).
template <class T, class SrcRow, class Scale>
void gather_row_major(Index rows, Index d, SrcRow& src_row, Scale& scale, T* dst, Index first, Index last) {
  for (Index i = first * kGatherPanel; i < std::min(rows, last * kGatherPanel); ++i) {
    const T* s = src_row(i);
    const T f = scale(i);
    for (Index k = 0; k < d; ++k) dst[i * d + k] = f * s[k];
  }
}

/// One panel of kGatherPanel token rows of the column-major scratch: the source rows (null past
/// the last token) and their scales, and where the panel lands: row r0 of the ld rows of row
/// block blk, n of its rows inside them.
template <class T>
struct GatherPanel {
  const T* s[kGatherPanel];
  T f[kGatherPanel];
  RowBlock blk;
  Index ld, r0, n;
};

/// Fills `panel` with panel p of `rows` token rows.
template <class T, class SrcRow, class Scale>
void load_panel(Index rows, Index p, SrcRow& src_row, Scale& scale, GatherPanel<T>& panel) {
  static_assert(kRowBlock % kGatherPanel == 0, "a panel lies in one row block");
  const Index r = p * kGatherPanel;
  panel.blk = row_block_of(rows, r);
  panel.ld = scratch_rows<T>(panel.blk.rows);
  panel.r0 = r - panel.blk.first;
  panel.n = std::min(kGatherPanel, panel.ld - panel.r0);
  for (Index i = 0; i < panel.n; ++i) {
    panel.s[i] = r + i < rows ? src_row(r + i) : nullptr;
    panel.f[i] = panel.s[i] ? scale(r + i) : T(0);
  }
}

/// The panel as token tiles (kPackTokenTiles): depth block by depth block, its 16 rows are one
/// tile, k-major, row-minor.
inline void write_token_tiles(const GatherPanel<float>& panel, Index d, float* packed) {
  const auto& [s, f, blk, ld, r0, n] = panel;
  for (Index k0 = 0; k0 < d; k0 += kDepthBlock) {
    const Index kc = std::min(kDepthBlock, d - k0);
    float* tile = packed + blk.first * d + k0 * ld + r0 * kc;
    for (Index k = 0; k < kc; ++k)
      for (Index i = 0; i < n; ++i) tile[k * n + i] = s[i] ? f[i] * s[i][k0 + k] : 0.0f;
  }
}

#if defined(__AVX512BF16__) && MOE_BF16_DOT
/// The panel as bf16 pairs (pack_bf16_pairs' layout): 32 depths at a time through a 2 KB block in
/// L1, packed from there.
inline void write_bf16_pairs(const GatherPanel<float>& panel, Index d, std::uint32_t* pairs) {
  static_assert(kGatherPanel == 16, "pack_bf16_pairs takes rows in vectors of 16");
  constexpr Index kPanel = kGatherPanel, kDepths = 32;
  const auto& [s, f, blk, ld, r0, n] = panel;
  alignas(64) float block[kDepths * kPanel];
  for (Index k0 = 0; k0 < d; k0 += kDepths) {
    const Index kc = std::min(kDepths, d - k0);
    Index k = 0;
    for (; k + 16 <= kc; k += 16) gather_16x16(s, f, k0 + k, block + k * kPanel, kPanel);
    for (; k < kc; ++k)
      for (Index i = 0; i < kPanel; ++i) block[k * kPanel + i] = s[i] ? f[i] * s[i][k0 + k] : 0.0f;
    pack_bf16_pairs(block, kPanel, kPanel, kc, pairs + blk.first * ((d + 1) / 2) + k0 / 2 * ld + r0, ld);
  }
}
#endif

/// The panel into its row block of the column-major scratch dst, each destination line written
/// whole (16 x 16 transposes in registers where there are 16 rows and AVX-512).
template <class T>
void write_columns(const GatherPanel<T>& panel, Index d, T* dst) {
  const auto& [s, f, blk, ld, r0, n] = panel;
  T* const block_dst = dst + blk.first * d;
  Index k0 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    if (n == kGatherPanel)
      for (; k0 + 16 <= d; k0 += 16) gather_16x16(s, f, k0, block_dst + k0 * ld + r0, ld);
#endif
  for (Index k = k0; k < d; ++k)
    for (Index i = 0; i < n; ++i) block_dst[k * ld + r0 + i] = s[i] ? f[i] * s[i][k] : T(0);
}

/// Writes token rows into the input layout of with_scratch_layout: dst holds `rows` rows of d
/// values, row i = src_row(i) (a pointer to d values) times scale(i). Column-major rows are
/// written in panels of 16 (16 source rows read in step), padding rows as zeros, each panel into
/// its row block. Runs the panels [first, last), so callers can split the work. packed (only where
/// uses_packed_activations): the rows go there instead, packed_width(d) elements per row
/// (PackedScratch::x_width) — as bf16 pairs (the same rounding as many_rows_matmul packing them
/// itself), or as token tiles (a panel is one tile) — and dst is not written (packed may be dst
/// itself: token tiles take as much room).
template <class T, class SrcRow, class Scale, class P = std::uint32_t>
void gather_scratch_rows(Index rows, Index d, SrcRow&& src_row, Scale&& scale, T* dst, Index first,
                         Index last, P* packed = nullptr) {
  if (rows <= kFewRows) return gather_row_major(rows, d, src_row, scale, dst, first, last);
  for (Index p = first; p < last; ++p) {
    GatherPanel<T> panel;
    load_panel(rows, p, src_row, scale, panel);
    if constexpr (std::is_same_v<T, float> && std::is_same_v<P, float> && kPackTokenTiles) {
      if (packed) {
        write_token_tiles(panel, d, packed);
        continue;
      }
    }
#if defined(__AVX512BF16__) && MOE_BF16_DOT
    if constexpr (std::is_same_v<T, float> && std::is_same_v<P, std::uint32_t>) {
      if (packed) {
        write_bf16_pairs(panel, d, packed);
        continue;
      }
    }
#endif
    write_columns(panel, d, dst);
  }
  static_cast<void>(packed);  // unused where the kernels read no packed activations
}

/// Panels of kGatherPanel rows gather_scratch_rows writes for `rows` rows.
template <class T>
Index num_gather_panels(Index rows) {
  return (scratch_rows<T>(rows) + kGatherPanel - 1) / kGatherPanel;
}

/// y[c] = fma(w, row[c], y[c]) for c < n: y += w · row as GCC contracts it, in whole vectors.
inline void add_scaled_row(float* y, Index n, float w, const float* row) {
  constexpr Index L = FloatLanes::kWidth;
  const FloatLanes wv = FloatLanes::broadcast(w);
  Index c = 0;
  for (; c + L <= n; c += L) {
    FloatLanes acc = FloatLanes::load(y + c);
    acc.fma(FloatLanes::load(row + c), wv);
    acc.store(y + c);
  }
  for (; c < n; ++c) y[c] = std::fma(w, row[c], y[c]);
}

}  // namespace moe::detail
