// moe — out = X·W for a few token rows, W given by its contiguous columns: the decode-time product.
//
// Hugging Face stores a projection as [out, in]: each output column's weights are `in` contiguous
// values. For a handful of token rows the cost is reading those weights once, so this kernel walks
// a tile of weight columns in step, and every token row of the tile uses each weight vector while it
// is in registers: the weights stream from memory once per call, with no packing. Weights may be
// float, bfloat16 or IEEE half; they are widened to float exactly and every product is accumulated
// in float (fused multiply-add), so a bf16/half call gives bitwise the result of the float call on
// the widened weights.
//
// Determinism: out(r, j) is a function of row r of X and column j of W only — lanes of L partial
// sums over k ≡ lane (mod L), in k order, then one fixed reduction of the L lanes — never of the
// tile, the number of rows or columns, or the thread that runs it. (L is 16 with AVX-512, 8
// otherwise: results differ between machines of different ISA, never between runs on one.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "moe/core/types.hpp"
#include "moe/layer/detail/float_lanes.hpp"
#include "moe/layer/detail/prefetch.hpp"

namespace moe::detail {

/// Each weight stream is prefetched this far ahead. Past a column's end the prefetch goes the same
/// distance into column c + C instead, which the next tile streams: short columns (an expert's
/// W_down has depth m = 1376) would otherwise start every tile from cold memory.
constexpr Index kPrefetchBytes = 1024;

#if defined(__AVX512F__) && defined(__GNUC__)
/// Float weights off 64-byte boundaries (a safetensors file aligns its tensors to 8 bytes only: the
/// tiny Llama fixture's sit at 56 mod 64) are loaded once per tile, for all its rows. GCC folds a weight
/// load into every row's FMA as a memory operand, R loads of the same vector; on 64-byte-aligned
/// weights that costs nothing, but off them each of the R loads straddles two cache lines, and
/// loading once is faster; aligned weights keep the folded loads, which are (bench/RESULTS.md,
/// "unaligned weights"). A masked load cannot be folded into an FMA; its mask is all lanes,
/// hidden from the compiler so that it does not turn the load back into a plain one.
constexpr bool kLoadWeightsOnce = true;
inline __mmask16 all_lanes_opaque() {
  __mmask16 m = 0xFFFF;
  asm("" : "+k"(m));  // the value is unchanged; the compiler only no longer knows it
  return m;
}
#else
/// (8-lane builds keep the folded loads: their 16-register tiles have other trade-offs.)
constexpr bool kLoadWeightsOnce = false;
#endif

/// One R x C tile: out(r, c) = Σ_k x[r·ldx + k] · w[c·ldw + k], k < depth.
/// kOnce: each weight vector loaded into a register once for all R rows (see kLoadWeightsOnce);
/// the same products and sums in the same order, so the same bits, as without.
template <int R, int C, bool kOnce, class W>
void few_rows_tile(const float* x, Index ldx, const W* w, Index ldw, Index depth, float* out,
                   Index out_row_stride, Index out_col_stride) {
  static_assert(!kOnce || (kLoadWeightsOnce && std::is_same_v<W, float>), "kOnce: float weights, AVX-512");
  constexpr Index L = FloatLanes::kWidth;
#if defined(__AVX512F__) && defined(__GNUC__)
  [[maybe_unused]] const __mmask16 all = kOnce ? all_lanes_opaque() : __mmask16(0xFFFF);
#endif
  FloatLanes acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = FloatLanes::zero();
  const Index full = depth / L * L;
  // Two runs of k, so a prefetch is the load's own address plus a fixed offset (no per-column
  // branch, and no extra registers for 8 column pointers): while k + kAhead stays inside the
  // columns, kAhead past the load; after, the same distance into the next tile's columns.
  constexpr Index kAhead = kPrefetchBytes / static_cast<Index>(sizeof(W));
  const auto step = [&](Index k, Index prefetch_offset) {
    FloatLanes wv[C];
    for (int c = 0; c < C; ++c) {
      const W* p = w + c * ldw + k;
      prefetch_at(p, prefetch_offset * static_cast<Index>(sizeof(W)));
#if defined(__AVX512F__) && defined(__GNUC__)
      if constexpr (kOnce) {
        wv[c] = {_mm512_maskz_loadu_ps(all, p)};
        continue;
      }
#endif
      wv[c] = FloatLanes::load(p);
    }
    for (int r = 0; r < R; ++r) {
      const FloatLanes xv = FloatLanes::load(x + r * ldx + k);
      for (int c = 0; c < C; ++c) acc[r][c].fma(xv, wv[c]);
    }
  };
  const Index inside = std::min(full, std::max<Index>(0, depth - kAhead));
  Index k = 0;
  for (; k < inside; k += L) step(k, kAhead);
  for (; k < full; k += L) step(k, C * ldw + kAhead - depth);
  if (full < depth) {
    FloatLanes wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load_tail(w + c * ldw + full, depth - full);
    for (int r = 0; r < R; ++r) {
      const FloatLanes xv = load_tail(x + r * ldx + full, depth - full);
      for (int c = 0; c < C; ++c) acc[r][c].fma(xv, wv[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * out_row_stride + c * out_col_stride] = acc[r][c].sum();
}

/// All rows against C columns: tiles of R rows, then the fewer than R rows left in one tile (a
/// 1-row tile uses each weight vector once: nothing to load once for).
template <int R, int C, bool kOnce, class W>
void few_rows_columns(const float* x, Index ldx, Index rows, const W* w, Index ldw, Index depth, float* out,
                      Index out_row_stride, Index out_col_stride) {
  Index r = 0;
  for (; r + R <= rows; r += R)
    few_rows_tile<R, C, kOnce && (R > 1)>(x + r * ldx, ldx, w, ldw, depth, out + r * out_row_stride,
                                          out_row_stride, out_col_stride);
  if constexpr (R > 1)
    if (r < rows)
      few_rows_columns<R - 1, C, kOnce>(x + r * ldx, ldx, rows - r, w, ldw, depth, out + r * out_row_stride,
                                        out_row_stride, out_col_stride);
}

/// Every column, C at a time, then 4, then 1; the rows in tiles of R.
template <int R, int C, bool kOnce, class W>
void few_rows_tiles(const float* x, Index ldx, Index rows, const W* w, Index ldw, Index depth, Index cols,
                    float* out, Index out_row_stride, Index out_col_stride) {
  Index j = 0;
  for (; j + C <= cols; j += C)
    few_rows_columns<R, C, kOnce>(x, ldx, rows, w + j * ldw, ldw, depth, out + j * out_col_stride,
                                  out_row_stride, out_col_stride);
  for (; j + 4 <= cols; j += 4)
    few_rows_columns<R, 4, kOnce>(x, ldx, rows, w + j * ldw, ldw, depth, out + j * out_col_stride,
                                  out_row_stride, out_col_stride);
  for (; j < cols; ++j)
    few_rows_columns<R, 1, kOnce>(x, ldx, rows, w + j * ldw, ldw, depth, out + j * out_col_stride,
                                  out_row_stride, out_col_stride);
}

/// The tiles of R rows and C columns, their float weights loaded once for all rows where those
/// are off 64-byte boundaries (kLoadWeightsOnce).
template <int R, int C, class W>
void few_rows_tiles_for(const float* x, Index ldx, Index rows, const W* w, Index ldw, Index depth, Index cols,
                        float* out, Index out_row_stride, Index out_col_stride) {
  if constexpr (kLoadWeightsOnce && std::is_same_v<W, float>) {
    const auto address = reinterpret_cast<std::uintptr_t>(w);
    const auto column_bytes = static_cast<std::uintptr_t>(ldw) * sizeof(W);
    if (rows > 1 && (address % 64 != 0 || column_bytes % 64 != 0))
      return few_rows_tiles<R, C, true>(x, ldx, rows, w, ldw, depth, cols, out, out_row_stride,
                                        out_col_stride);
  }
  few_rows_tiles<R, C, false>(x, ldx, rows, w, ldw, depth, cols, out, out_row_stride, out_col_stride);
}

#if defined(__AVX512F__)
/// Weight columns per tile for 1-2 token rows and for 3 rows and more (tiles of 4 rows): see
/// few_rows_matmul.
constexpr int kFewRowsColsUpTo2 = 8;
constexpr int kFewRowsColsFrom3 = 6;
#else
/// With 16 vector registers (AVX2, the portable fallback) the AVX-512 tiles spill: 2 x 8 needs 16
/// sums and 8 weight vectors, 4 x 6 24 sums. 2 x 4 (8 sums, 4 weights, a row: 13 registers) and
/// 4 x 3 (12 + 3 + 1 = 16) do not (bench/RESULTS.md, "8-lane decode tiles").
constexpr int kFewRowsColsUpTo2 = 4;
constexpr int kFewRowsColsFrom3 = 3;
#endif

/// out(r, j) = Σ_k x(r, k) · W(k, j) for r < rows, j < cols, k < depth.
/// x: row r at x + r·ldx; W: column j at w + j·ldw (depth contiguous values, float / bf16 / half);
/// out(r, j) at out + r·out_row_stride + j·out_col_stride.
template <class W>
void few_rows_matmul(const float* x, Index ldx, Index rows, const W* w, Index ldw, Index depth, Index cols,
                     float* out, Index out_row_stride, Index out_col_stride) {
  static_assert(
      std::is_same_v<W, float> || std::is_same_v<W, Eigen::bfloat16> || std::is_same_v<W, Eigen::half>,
      "few_rows_matmul: weights are float, Eigen::bfloat16 or Eigen::half");
  // With AVX-512 (16 registers: the narrower tiles above).
  // 1-2 rows: 8 weight columns in flight. 8 memory streams keep the prefetchers busy, and 8
  // independent sums per row hide the FMA latency.
  // 3 rows and more: 6 columns, in tiles of 4 rows. 4 x 6 sums, 6 weight vectors and a row fill
  // 31 of AVX-512's 32 registers, so each weight vector is loaded once per k step; a 3 x 8 tile
  // (33 registers) re-reads them from L1 for every row (bench/RESULTS.md, "decode tiles").
  if (rows <= 2)
    return few_rows_tiles_for<2, kFewRowsColsUpTo2>(x, ldx, rows, w, ldw, depth, cols, out, out_row_stride,
                                                    out_col_stride);
  few_rows_tiles_for<4, kFewRowsColsFrom3>(x, ldx, rows, w, ldw, depth, cols, out, out_row_stride,
                                           out_col_stride);
}

}  // namespace moe::detail
