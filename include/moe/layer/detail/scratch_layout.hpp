// moe — the layout of the FFN kernels' scratch: token rows row-major up to kFewRows, column-major
// in blocks of kRowBlock rows past it, and the packed copies (bf16 pairs, token tiles) of the
// activations that the many-rows kernel reads. The dense FFN and each expert of the MoE layer use it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/detail/many_rows_matmul.hpp"

namespace moe::detail {

/// Column width of one task. Work is cut into (matrix, column block) tasks of this fixed width,
/// never by thread count, so every output element is computed by the same sequence of
/// operations whatever the pool size (bitwise determinism).
constexpr Index kColumnBlock = 256;

/// Up to this many token rows, an expert's products run column by column (matrix-vector
/// products) instead of as one GEMM (see MOE_FEW_ROWS in config.hpp).
constexpr Index kFewRows = MOE_FEW_ROWS;

inline Index num_column_blocks(Index cols) { return (cols + kColumnBlock - 1) / kColumnBlock; }

/// Rows of scratch kept for `rows` token rows. Past kFewRows the scratch is column-major, and in
/// float the many-rows kernel computes whole vectors of rows, so it is padded to those.
template <class T>
Index scratch_rows(Index rows) {
  return std::is_same_v<T, float> && rows > kFewRows ? padded_rows(rows) : rows;
}

/// Token rows per block of the column-major scratch: a GEMM's working set per depth block (its
/// rows' inputs and outputs and one column block of weights) then fits a 1 MB L2, which 512 rows'
/// did not (bench/RESULTS.md, "row blocks").
constexpr Index kRowBlock = 128;
static_assert(kRowBlock % kPanelRowQuantum == 0, "a row block is whole vectors of rows");

/// Rows [first, first + rows) of the scratch: one block of the column-major layout.
struct RowBlock {
  Index first = 0;
  Index rows = 0;
};

/// Blocks of the scratch for `rows` token rows past kFewRows: one up to 2·kRowBlock - 1 rows,
/// else rows / kRowBlock blocks of kRowBlock rows, the last taking the rest (kRowBlock to
/// 2·kRowBlock - 1 rows), so no block is small enough for the few-rows kernel. Every block but
/// the last is whole vectors, so block b starts at row b·kRowBlock of the scratch and all of
/// them take scratch_rows(rows) rows. Each row's sums do not depend on its block (the kernels'
/// determinism): the blocks change the memory traffic, not one bit of the result.
inline Index num_row_blocks(Index rows) { return rows < 2 * kRowBlock ? 1 : rows / kRowBlock; }
inline RowBlock row_block(Index rows, Index b) {
  const Index first = b * kRowBlock;
  return {first, b + 1 < num_row_blocks(rows) ? kRowBlock : rows - first};
}
/// The block holding token row i.
inline RowBlock row_block_of(Index rows, Index i) {
  return row_block(rows, std::min(i / kRowBlock, num_row_blocks(rows) - 1));
}

/// Calls f(x, g, h, y, block) with views of one expert's (or the dense FFN's) scratch for `rows`
/// tokens: x: the input (laid out by the caller), g, h: hidden width m, y: width d. Up to kFewRows
/// rows, once, row-major (the matrix-vector kernel reads token rows). Above, once per row block:
/// column-major views of block.rows rows, scratch_rows<T>(block.rows) apart, the block's part
/// of each buffer starting at row block.first (the GEMM kernel reads token panels; Eigen's GEMM,
/// for double, reads any layout).
template <class T, class F>
void with_scratch_layout(Index rows, Index m, Index d, const T* x, T* g, T* h, T* y, F&& f) {
  if (rows <= kFewRows) {
    Eigen::Map<const RowMatrix<T>> xm(x, rows, d);
    Eigen::Map<RowMatrix<T>> gm(g, rows, m), hm(h, rows, m), ym(y, rows, d);
    f(xm, gm, hm, ym, RowBlock{0, rows});
    return;
  }
  for (Index b = 0; b < num_row_blocks(rows); ++b) {
    const RowBlock blk = row_block(rows, b);
    const Eigen::OuterStride<> ld(scratch_rows<T>(blk.rows));
    Eigen::Map<const ColMatrix<T>, 0, Eigen::OuterStride<>> xm(x + blk.first * d, blk.rows, d, ld);
    Eigen::Map<ColMatrix<T>, 0, Eigen::OuterStride<>> gm(g + blk.first * m, blk.rows, m, ld),
        hm(h + blk.first * m, blk.rows, m, ld), ym(y + blk.first * d, blk.rows, d, ld);
    f(xm, gm, hm, ym, blk);
  }
}

/// Whether the many-rows kernel runs on activations packed as bf16 pairs for an expert (or dense
/// FFN) with T activations, W weights and `rows` token rows: bf16 weights with kBf16DotProducts,
/// past kFewRows. Its input is then gathered straight into pairs, and its hidden activations
/// packed where they are computed, once each instead of once per column block of every matmul.
template <class T, class W>
constexpr bool kBf16Pairs = kBf16DotProducts&& std::is_same_v<T, float>&& std::is_same_v<W, Eigen::bfloat16>;
template <class T, class W>
constexpr bool uses_bf16_pairs(Index rows) {
  return kBf16Pairs<T, W> && rows > kFewRows;
}
/// The same for float token tiles (kPackTokenTiles: 8-lane builds; never with bf16 pairs, which
/// need AVX-512): float activations, any weights, past kFewRows. The input is gathered straight
/// into tiles, in place of its column-major scratch (only the kernels read it), and h is packed
/// into a buffer of its own where it is computed (apply_glu_block and FfnWorkspace::hidden read
/// h column-major). Packed once here, not in every column block of every matmul.
template <class T, class W>
constexpr bool kFloatTiles = kPackTokenTiles&& std::is_same_v<T, float> && !kBf16Pairs<T, W>;
template <class T, class W>
constexpr bool uses_packed_activations(Index rows) {
  return (kBf16Pairs<T, W> || kFloatTiles<T, W>)&&rows > kFewRows;
}
/// The element of the packed activations: a bf16 pair, or a float of a token tile.
template <class T, class W>
using PackedElement = std::conditional_t<kBf16Pairs<T, W>, std::uint32_t, float>;
/// Elements per token row of n packed activations: pairs hold two.
template <class T, class W>
constexpr Index packed_width(Index n) {
  return kBf16Pairs<T, W> ? (n + 1) / 2 : n;
}

/// The packed copies of one expert's (or the dense FFN's) activations, in row blocks as the float
/// scratch, where uses_packed_activations: bf16 pairs (P = std::uint32_t, pack_bf16_pairs' layout)
/// or float token tiles (P = float, pack_token_tiles' layout depth block after depth block) — the
/// kernel's a_packed. x: the input, packed_width(d) elements per token row; h: the hidden
/// activations, packed_width(m); ld: scratch_rows of the rows they hold. x_width, h_width:
/// elements per token row each buffer leaves (>= those), so row block b starts at
/// x + first·x_width. All null otherwise: the kernels read the float scratch.
template <class P>
struct PackedScratch {
  P* x = nullptr;
  P* h = nullptr;
  Index ld = 0;
  Index x_width = 0;
  Index h_width = 0;

  /// The packed activations of one row block (with_scratch_layout), or none where there are none.
  PackedScratch block(const RowBlock& b) const {
    if (!x) return {};
    return {x + b.first * x_width, h + b.first * h_width, scratch_rows<float>(b.rows), x_width, h_width};
  }
};
using PairScratch = PackedScratch<std::uint32_t>;

}  // namespace moe::detail
