// moe — C = A·W for many token rows (prefill): a register-blocked GEMM over token panels.
//
// Both operands keep k contiguous in their natural layouts (token rows of x; Hugging Face's
// [out, in] weight rows), so one must be transposed for a broadcast kernel. This kernel takes A
// transposed — "token-minor": A(r, k) at a[k·lda + r] — which is exactly how the caller lays out
// the gathered expert inputs and the hidden activations (column-major, rows padded to whole
// vectors), so only the gather transposes, once per call, and the hidden layer feeds the down
// projection as it is. Float weights are read where they are stored; bf16/half weights are widened
// a panel at a time (up to kPanelCols columns by kDepthBlock k) into a small block on the stack,
// which every token panel then reuses from L1.
//
// Micro-kernel: V vectors of token rows x C weight columns, V·C accumulators; per k, V loads of A
// and C broadcasts of W feed V·C fused multiply-adds. With AVX-512: 4 vectors (64 rows) x 6
// columns where a panel has 64 rows or more, else up to 3 vectors x 8 columns.
//
// With AVX512-BF16 and bf16 weights (MOE_BF16_DOT, config.hpp), the tile multiplies pairs of k
// in bf16 instead (vdpbf16ps, twice the products per instruction): A is rounded to bf16 and packed
// in k-pairs (by the layer, once per expert input and hidden layer), the weights are broadcast as
// stored, and the depth blocks are kPairDepthBlock deep.
//
// Determinism: C(r, j) = (((Σ_{k in block 0}) + Σ_{k in block 1}) + ...), each block summed in k
// order with FMA (blocks of kDepthBlock, or kPairDepthBlock for bf16 pairs) — a function of row r
// of A and column j of W only, never of the tiling, the row count, the loop order or the thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/detail/float_lanes.hpp"
#include "moe/layer/detail/prefetch.hpp"

namespace moe::detail {

/// Rows of A and C come in whole vectors: callers pad the token dimension to a multiple of this
/// (with zero rows in A) and size lda, ldc accordingly.
constexpr Index kPanelRowQuantum = FloatLanes::kWidth;
inline Index padded_rows(Index rows) {
  return (rows + kPanelRowQuantum - 1) / kPanelRowQuantum * kPanelRowQuantum;
}

#if defined(__AVX512F__)
// 8 columns, not the 12 that 32 registers could hold: with 12 column pointers the compiler spills
// some to other registers in the k loop, and at d = 4096 the 12 columns (16 KB apart in float,
// 8 KB in bf16) share L1 sets (bench/RESULTS.md, "prefill panels").
constexpr int kPanelCols = 8;
// From 4 vectors of rows on, 6 columns in tiles of 4 vectors: 24 accumulators (29 registers with
// the row vectors and a broadcast) against 2 x 8's 16, so each weight broadcast and each row
// vector feeds more products: fewer loads per product and fewer weight columns sharing L1 sets.
// 6 does not divide kColumnBlock (256): each column block ends in a 4-column panel, which costs
// about its share of the columns.
constexpr int kPanelColsManyRows = 6;
constexpr int kMaxTileVectors = 4;
constexpr int kRegisters = 32;
#else
constexpr int kPanelCols = 6;  // 12 accumulators of 16 registers (AVX2)
constexpr int kPanelColsManyRows = 6;
constexpr int kMaxTileVectors = 2;
constexpr int kRegisters = 16;
#endif
/// Token rows in a full tile: the rows a packed token tile holds (pack_token_tiles).
constexpr Index kTokenTileRows = Index{kMaxTileVectors} * FloatLanes::kWidth;

/// Columns per weight panel for a panel of `rows` token rows (a multiple of kPanelRowQuantum).
inline int panel_cols(Index rows) { return rows >= kTokenTileRows ? kPanelColsManyRows : kPanelCols; }

/// Vectors of rows per tile of C columns: the most (up to kMaxTileVectors) whose accumulators, row
/// vectors and one broadcast fit the registers.
template <int C>
constexpr int kTileVectors = std::min(kMaxTileVectors, (kRegisters - 1) / (C + 1));
constexpr Index kDepthBlock = 256;

/// The next weight panel is prefetched into L2, not L1: with d = 4096 an expert's columns lie
/// 16 KB apart, so a panel's columns share L1 sets, and the next panel's lines, pulled into L1,
/// would evict the current one's (bench/RESULTS.md, "prefill panels").
constexpr PrefetchTo kNextPanelTo = PrefetchTo::kL2;

/// One tile: V vectors of rows x C columns over one depth block of kc. b: column j at b + j·ldb.
/// first: store the block's sums; otherwise add them to C. next (or nullptr): the stored weights
/// the next panel will read, column j at next + j·ldnext, kc values each, prefetched a line per
/// column every 64 bytes of k (into kNextPanelTo), so they arrive while this tile computes.
template <int V, int C, class W>
void many_rows_tile(const float* a, Index lda, const float* b, Index ldb, Index kc, float* c, Index ldc,
                    bool first, const W* next, Index ldnext) {
  constexpr Index L = FloatLanes::kWidth;
  constexpr Index kLine = 64 / static_cast<Index>(sizeof(W));
  FloatLanes acc[C][V];
  for (int j = 0; j < C; ++j)
    for (int v = 0; v < V; ++v) acc[j][v] = FloatLanes::zero();
  for (Index k = 0; k < kc; ++k) {
    if (next && k % kLine == 0)
      for (int j = 0; j < C; ++j)
        prefetch_at<kNextPanelTo>(next, (j * ldnext + k) * static_cast<Index>(sizeof(W)));
    FloatLanes av[V];
    for (int v = 0; v < V; ++v) av[v] = FloatLanes::load(a + k * lda + v * L);
    for (int j = 0; j < C; ++j) {
      const FloatLanes bj = FloatLanes::broadcast(b[j * ldb + k]);
      for (int v = 0; v < V; ++v) acc[j][v].fma(av[v], bj);
    }
  }
  for (int j = 0; j < C; ++j)
    for (int v = 0; v < V; ++v) {
      float* p = c + j * ldc + v * L;
      if (!first) acc[j][v].add(FloatLanes::load(p));
      acc[j][v].store(p);
    }
}

#if defined(__AVX512BF16__) && MOE_BF16_DOT
/// bf16 weights multiply bf16-rounded activations in pairs (MOE_BF16_DOT in config.hpp).
constexpr bool kBf16DotProducts = true;

/// Token rows k and k + 1 of 16 rows as bf16 pairs: element 2i = row i at k, 2i + 1 = row i at k + 1
/// (vdpbf16ps multiplies element 2i by the weight at k and 2i + 1 by the one at k + 1).
inline __m512bh bf16_row_pairs(__m512 at_k, __m512 at_k1) {
  alignas(64) static constexpr std::int16_t kInterleave[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                               21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                               11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(at_k1, at_k);  // at_k in 0..15, at_k1 in 16..31
  return (__m512bh)_mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both);
}

/// Token rows of A, rounded to bf16 and paired along k: p[kp·ldp + r] holds row r at k = 2kp (low
/// half) and 2kp + 1 (high half, zero past kc). rows: a multiple of 16. Done once per depth block
/// and row chunk, so every column panel reads them ready rather than converting them once per
/// column panel.
inline void pack_bf16_pairs(const float* a, Index lda, Index rows, Index kc, std::uint32_t* p, Index ldp) {
  for (Index kp = 0; kp < (kc + 1) / 2; ++kp)
    for (Index r = 0; r < rows; r += 16) {
      const __m512 hi = 2 * kp + 1 < kc ? _mm512_loadu_ps(a + (2 * kp + 1) * lda + r) : _mm512_setzero_ps();
      _mm512_storeu_si512(p + kp * ldp + r,
                          (__m512i)bf16_row_pairs(_mm512_loadu_ps(a + 2 * kp * lda + r), hi));
    }
}

/// The tile for bf16 weights read where they are stored, A packed by pack_bf16_pairs: per pair of
/// k, one 32-bit broadcast of each column's weight pair, V x C vdpbf16ps. An odd last k pairs
/// with zeros. Otherwise the contract of the float tile above (a, lda in pairs).
template <int V, int C>
void many_rows_tile(const std::uint32_t* a, Index lda, const Eigen::bfloat16* b, Index ldb, Index kc,
                    float* c, Index ldc, bool first, const Eigen::bfloat16* next, Index ldnext) {
  constexpr Index L = 16, kLine = 32;
  __m512 acc[C][V];
  for (int j = 0; j < C; ++j)
    for (int v = 0; v < V; ++v) acc[j][v] = _mm512_setzero_ps();
  const auto step = [&](Index k, bool pair) {
    __m512bh av[V];
    for (int v = 0; v < V; ++v) av[v] = (__m512bh)_mm512_loadu_si512(a + (k / 2) * lda + v * L);
    for (int j = 0; j < C; ++j) {
      std::uint32_t bits = 0;
      std::memcpy(&bits, b + j * ldb + k, pair ? 4 : 2);  // little-endian: weight k in the low half
      const auto bj = (__m512bh)_mm512_set1_epi32(static_cast<int>(bits));
      for (int v = 0; v < V; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], av[v], bj);
    }
  };
  Index k = 0;
  for (; k + 2 <= kc; k += 2) {
    if (next && k % kLine == 0)
      for (int j = 0; j < C; ++j) prefetch_at<kNextPanelTo>(next, (j * ldnext + k) * 2);
    step(k, true);
  }
  if (k < kc) step(k, false);
  for (int j = 0; j < C; ++j)
    for (int v = 0; v < V; ++v) {
      float* p = c + j * ldc + v * L;
      if (!first) acc[j][v] = _mm512_add_ps(acc[j][v], _mm512_loadu_ps(p));
      _mm512_storeu_ps(p, acc[j][v]);
    }
}
#else
constexpr bool kBf16DotProducts = false;
#endif

/// The last rows of a panel, fewer than a full tile: one tile of `vectors` vectors (< V).
template <int V, int C, class A, class B, class W>
void many_rows_last_tile(int vectors, const A* a, Index lda, const B* b, Index ldb, Index kc, float* c,
                         Index ldc, bool first, const W* next, Index ldnext) {
  if constexpr (V >= 1) {
    if (vectors == V) return many_rows_tile<V, C>(a, lda, b, ldb, kc, c, ldc, first, next, ldnext);
    many_rows_last_tile<V - 1, C>(vectors, a, lda, b, ldb, kc, c, ldc, first, next, ldnext);
  }
}

/// All token panels of one weight panel of C columns; the first also prefetches the next panel.
/// b: float weights (or a widened panel), or bf16 weights with kBf16DotProducts.
/// packed: A as pack_token_tiles lays it out (the tile of rows r... at a + r·kc, lda unused).
template <int C, class A, class B, class W>
void many_rows_panel(const A* a, Index lda, Index rows, const B* b, Index ldb, Index kc, float* c, Index ldc,
                     bool first, const W* next, Index ldnext, bool packed = false) {
  constexpr int V = kTileVectors<C>;
  constexpr Index L = FloatLanes::kWidth;
  const auto tile_a = [&](Index r) { return packed ? a + r * kc : a + r; };
  Index r = 0;
  for (; r + V * L <= rows; r += V * L) {
    many_rows_tile<V, C>(tile_a(r), packed ? V * L : lda, b, ldb, kc, c + r, ldc, first,
                         r == 0 ? next : nullptr, ldnext);
  }
  if (r < rows)
    many_rows_last_tile<V - 1, C>(static_cast<int>((rows - r) / L), tile_a(r), packed ? rows - r : lda, b,
                                  ldb, kc, c + r, ldc, first, r == 0 ? next : nullptr, ldnext);
}

/// The kernel for a column count known at run time (the last panel of a block may be narrow).
template <int C = kPanelCols, class A, class B, class W>
void many_rows_panel_any(int cols, const A* a, Index lda, Index rows, const B* b, Index ldb, Index kc,
                         float* c, Index ldc, bool first, const W* next, Index ldnext, bool packed = false) {
  if constexpr (C >= 1) {
    if (cols == C) return many_rows_panel<C>(a, lda, rows, b, ldb, kc, c, ldc, first, next, ldnext, packed);
    many_rows_panel_any<C - 1>(cols, a, lda, rows, b, ldb, kc, c, ldc, first, next, ldnext, packed);
  }
}

#if defined(__AVX512F__)
/// AVX-512 tiles read A where it lies: their 64-row tiles come near the FMA peak that way.
constexpr bool kPackTokenTiles = false;
#else
/// With 8-lane vectors (AVX2, the portable fallback) each depth block of A is first copied tile by
/// tile into one contiguous run per tile (pack_token_tiles), which every weight panel then reads
/// in order. A 16-row AVX2 tile reads one 64-byte line per k, lda floats apart (512 bytes for a
/// 128-row block): those 256 lines fall in 8 of L1's 64 sets, so they come from L2 for every
/// panel, in a stride the prefetchers follow poorly (bench/RESULTS.md, "token tiles").
constexpr bool kPackTokenTiles = true;
#endif
/// Token rows per packed chunk: 128 rows x kDepthBlock floats, 128 KB on the stack (the layer's row
/// blocks, scratch_layout.hpp's kRowBlock, are one chunk; its last block, up to 255 rows, two).
constexpr Index kPackedRows = 128;
static_assert(kPackedRows % kTokenTileRows == 0, "chunks are whole tiles");
static_assert(
    !kPackTokenTiles ||
        (kTileVectors<kPanelCols> == kMaxTileVectors && kTileVectors<kPanelColsManyRows> == kMaxTileVectors),
    "packed tiles are kMaxTileVectors vectors for every panel width (kTileVectors only grows as C shrinks)");

/// Rows [0, rows) (a multiple of FloatLanes::kWidth) of A at depths [0, kc) copied as
/// many_rows_panel reads them packed: tiles of kMaxTileVectors vectors of rows (the last: the
/// rows left), the tile of rows [r, r + n) at p + r·kc, row r + i at depth k in p[r·kc + k·n + i].
/// (The vector count is a template argument: with a run-time count GCC turned the copy into a
/// `rep movs` per k, which took a third of the layer's time.)
template <int V>
void pack_token_tile(int vectors, const float* a, Index lda, Index kc, float* p) {
  constexpr Index L = FloatLanes::kWidth;
  if constexpr (V >= 1) {
    if (vectors < V) return pack_token_tile<V - 1>(vectors, a, lda, kc, p);
    for (Index k = 0; k < kc; ++k)
      for (int v = 0; v < V; ++v) FloatLanes::load(a + k * lda + v * L).store(p + (k * V + v) * L);
  }
}
inline void pack_token_tiles(const float* a, Index lda, Index rows, Index kc, float* p) {
  constexpr Index L = FloatLanes::kWidth;
  for (Index r = 0; r < rows; r += kTokenTileRows)
    pack_token_tile<kMaxTileVectors>(static_cast<int>(std::min(kTokenTileRows, rows - r) / L), a + r, lda, kc,
                                     p + r * kc);
}

/// Up to this many (padded) token rows, each weight panel runs through its whole depth before the
/// next panel starts ("panel-outer"); above, each depth block runs through all panels. Few rows
/// make few products per weight, so the weights' memory stream sets the pace, and panel-outer
/// reads each weight column as one contiguous run (16 KB at d = 4096 in float) instead of one
/// 1 KB run per depth block. With many rows, depth-block-outer keeps one depth block of A hot for
/// every panel, where panel-outer would re-read all of A for each. Either order adds the same
/// depth blocks in the same order to each element of C: the results are bitwise the same.
/// bf16 pairs packed inside the call (no a_packed) stay depth-block-outer: they are packed one
/// depth block at a time. Measurements: MOE_PANEL_OUTER_ROWS in config.hpp.
constexpr Index kPanelOuterRows = MOE_PANEL_OUTER_ROWS;

/// The weights the panel after (k0, j0) reads. Depth block outer: the next columns at this depth,
/// else the first columns of the next depth block. Panel outer: the next depth block of these
/// columns, else the next columns from depth 0. None after the last. Streaming them in during a
/// panel's FMAs hides the memory latency where few token rows share each weight.
/// kb: the depth block (kDepthBlock, or kPairDepthBlock for bf16 pairs).
template <class W>
const W* next_weight_panel(const W* w, Index ldw, Index depth, Index cols, Index k0, Index j0, int panel,
                           bool panel_outer, Index kb) {
  if (panel_outer) {
    if (k0 + kb < depth) return w + j0 * ldw + k0 + kb;
    if (j0 + panel < cols) return w + (j0 + panel) * ldw;
    return nullptr;
  }
  if (j0 + panel < cols) return w + (j0 + panel) * ldw + k0;
  if (k0 + kb < depth) return w + k0 + kb;
  return nullptr;
}

/// Calls f(k0, j0) for every depth block k0 (of kb) and weight panel j0 (of `panel` columns) of
/// a depth x cols matmul, in panel-outer or depth-block-outer order (kPanelOuterRows).
template <class F>
void for_each_panel(Index depth, Index kb, Index cols, int panel, bool panel_outer, F&& f) {
  if (panel_outer) {
    for (Index j0 = 0; j0 < cols; j0 += panel)
      for (Index k0 = 0; k0 < depth; k0 += kb) f(k0, j0);
  } else {
    for (Index k0 = 0; k0 < depth; k0 += kb)
      for (Index j0 = 0; j0 < cols; j0 += panel) f(k0, j0);
  }
}

#if defined(__AVX512BF16__) && MOE_BF16_DOT
/// The depth block of bf16 pairs, 4 x kDepthBlock: each tile runs 512 pairs of k between loading
/// and storing its sums, and reads each weight column in 2 KB runs (value determined
/// experimentally: bench/RESULTS.md, "bf16 pair depth block").
constexpr Index kPairDepthBlock = 1024;

/// Token rows per chunk of packed bf16 pairs: 128 rows x kPairDepthBlock / 2 pairs = 256 KB, read
/// by every column panel of a depth block while it stays in L2.
constexpr Index kPairChunkRows = 128;

/// One weight panel (`panel` columns from j0, clipped to cols; depth block k0) against packed
/// rows: p[kp·ldp + r] holds rows r < rows (a multiple of 16) at depth k0 + 2kp, k0 + 2kp + 1.
/// c: the rows' first output row. next: the weights to prefetch meanwhile, or nullptr.
inline void many_rows_pairs_panel(const std::uint32_t* p, Index ldp, Index rows, const Eigen::bfloat16* w,
                                  Index ldw, Index depth, Index cols, Index k0, Index j0, int panel, float* c,
                                  Index ldc, const Eigen::bfloat16* next) {
  const int nc = static_cast<int>(std::min<Index>(panel, cols - j0));
  many_rows_panel_any(nc, p, ldp, rows, w + j0 * ldw + k0, ldw, std::min(kPairDepthBlock, depth - k0),
                      c + j0 * ldc, ldc, k0 == 0, next, ldw);
}

/// Every column panel of depth block k0 against one chunk of packed rows (many_rows_pairs_panel's
/// p, rows, c). first_chunk: the chunk that prefetches the next weight panel (later chunks find it
/// in cache).
inline void many_rows_pairs_chunk(const std::uint32_t* p, Index ldp, Index rows, const Eigen::bfloat16* w,
                                  Index ldw, Index depth, Index cols, Index k0, float* c, Index ldc,
                                  bool first_chunk) {
  const int panel = panel_cols(rows);
  for (Index j0 = 0; j0 < cols; j0 += panel)
    many_rows_pairs_panel(p, ldp, rows, w, ldw, depth, cols, k0, j0, panel, c, ldc,
                          first_chunk
                              ? next_weight_panel(w, ldw, depth, cols, k0, j0, panel, false, kPairDepthBlock)
                              : nullptr);
}

/// many_rows_matmul for bf16 weights with A already packed by pack_bf16_pairs over its whole
/// depth: p[kp·ldp + r] = rows r at depth 2kp, 2kp + 1, for r < padded_rows(rows) <= ldp. The
/// same operations in the same order as packing inside the call (bitwise the same C), without
/// re-packing A for every column block: the layer packs an expert's input once, in its gather,
/// and its hidden activations once, where they are computed.
inline void many_rows_matmul_pairs(const std::uint32_t* p, Index ldp, Index rows, const Eigen::bfloat16* w,
                                   Index ldw, Index depth, Index cols, float* c, Index ldc) {
  const Index prows = padded_rows(rows);
  if (prows <= kPanelOuterRows) {
    const int panel = panel_cols(prows);
    for_each_panel(depth, kPairDepthBlock, cols, panel, true, [&](Index k0, Index j0) {
      many_rows_pairs_panel(p + k0 / 2 * ldp, ldp, prows, w, ldw, depth, cols, k0, j0, panel, c, ldc,
                            next_weight_panel(w, ldw, depth, cols, k0, j0, panel, true, kPairDepthBlock));
    });
    return;
  }
  for (Index k0 = 0; k0 < depth; k0 += kPairDepthBlock)
    for (Index r0 = 0; r0 < prows; r0 += kPairChunkRows)
      many_rows_pairs_chunk(p + k0 / 2 * ldp + r0, ldp, std::min(kPairChunkRows, prows - r0), w, ldw, depth,
                            cols, k0, c + r0, ldc, r0 == 0);
}
#endif

#if defined(__AVX512BF16__) && MOE_BF16_DOT
/// many_rows_matmul for bf16 weights and A unpacked: depth block by depth block, chunks of 32
/// token rows packed as bf16 pairs (64 KB on the stack), then every column panel against them;
/// the weights are broadcast from where they are stored. (The layer packs its activations once
/// instead; chunks change the tiles, not a bit.)
inline void many_rows_matmul_pack_pairs(const float* a, Index lda, Index prows, const Eigen::bfloat16* w,
                                        Index ldw, Index depth, Index cols, float* c, Index ldc) {
  constexpr Index kChunkRows = 32;
  alignas(64) std::uint32_t pairs[kChunkRows * kPairDepthBlock / 2];
  for (Index k0 = 0; k0 < depth; k0 += kPairDepthBlock) {
    const Index kc = std::min(kPairDepthBlock, depth - k0);
    for (Index r0 = 0; r0 < prows; r0 += kChunkRows) {
      const Index chunk = std::min(kChunkRows, prows - r0);
      pack_bf16_pairs(a + k0 * lda + r0, lda, chunk, kc, pairs, chunk);
      many_rows_pairs_chunk(pairs, chunk, chunk, w, ldw, depth, cols, k0, c + r0, ldc, r0 == 0);
    }
  }
}
#endif

/// One weight panel of many_rows_matmul's W (depth block k0, `panel_width` columns from j0)
/// against token rows of A, accumulated into C. W = float is broadcast from where it is stored
/// (copying it measured no faster); bf16 and half panels are widened into `panel` first.
template <class W>
struct WeightPanelProduct {
  const W* w;
  Index ldw, depth, cols;
  float* c;
  Index ldc;
  int panel_width;
  bool panel_outer;
  float* panel;  ///< kPanelCols x kDepthBlock floats (unused for float weights)

  /// rows_here rows from row r0, A at depth k0 from ak (token tiles if packed, else ld apart).
  /// prefetch: also fetch the next weight panel.
  void operator()(Index k0, Index j0, const float* ak, Index ld, Index r0, Index rows_here, bool packed,
                  bool prefetch) const {
    const Index kc = std::min(kDepthBlock, depth - k0);
    const int nc = static_cast<int>(std::min<Index>(panel_width, cols - j0));
    const W* next =
        prefetch ? next_weight_panel(w, ldw, depth, cols, k0, j0, panel_width, panel_outer, kDepthBlock)
                 : nullptr;
    float* cj = c + j0 * ldc + r0;
    if constexpr (std::is_same_v<W, float>) {
      many_rows_panel_any(nc, ak, ld, rows_here, w + j0 * ldw + k0, ldw, kc, cj, ldc, k0 == 0, next, ldw,
                          packed);
    } else {
      for (int j = 0; j < nc; ++j) {
        const W* src = w + (j0 + j) * ldw + k0;
        float* dst = panel + j * kc;
        Index k = 0;
        for (; k + FloatLanes::kWidth <= kc; k += FloatLanes::kWidth)
          FloatLanes::load(src + k).store(dst + k);
        for (; k < kc; ++k) dst[k] = widen(src[k]);
      }
      many_rows_panel_any(nc, ak, ld, rows_here, panel, kc, kc, cj, ldc, k0 == 0, next, ldw, packed);
    }
  }
};

/// many_rows_matmul with A unpacked in a build that reads token tiles (kPackTokenTiles), past
/// kPanelOuterRows rows: depth block by depth block, chunks of rows packed into tiles, then every
/// weight panel against them.
template <class W>
void many_rows_matmul_pack_tiles(const float* a, Index lda, Index prows,
                                 const WeightPanelProduct<W>& product) {
  alignas(64) float tiles[kPackTokenTiles ? kPackedRows * kDepthBlock : 1];
  for (Index k0 = 0; k0 < product.depth; k0 += kDepthBlock)
    for (Index r0 = 0; r0 < prows; r0 += kPackedRows) {
      const Index chunk = std::min(kPackedRows, prows - r0);
      pack_token_tiles(a + k0 * lda + r0, lda, chunk, std::min(kDepthBlock, product.depth - k0), tiles);
      for (Index j0 = 0; j0 < product.cols; j0 += product.panel_width)
        product(k0, j0, tiles, 0, r0, chunk, true, r0 == 0);
    }
}

/// C(r, j) = Σ_k A(r, k) · W(k, j) for r < rows, j < cols, k < depth.
/// A(r, k) at a[k·lda + r] and C(r, j) at c[j·ldc + r]: rows padded to a multiple of
/// kPanelRowQuantum (the padding rows of A zero; those of C are written too), lda, ldc >= that.
/// W: column j at w + j·ldw, depth contiguous values (float, bfloat16 or half, widened exactly;
/// with kBf16DotProducts, bf16 weights multiply A rounded to bf16 instead).
/// a_packed (or nullptr): A already packed over its whole depth, read instead of a:
///  - P = std::uint32_t, only bf16 weights with kBf16DotProducts: bf16 pairs by pack_bf16_pairs,
///    ld_packed apart (see many_rows_matmul_pairs);
///  - P = float, only with kPackTokenTiles: token tiles, each depth block packed by
///    pack_token_tiles, the block at depth k0 at a_packed + k0·ld_packed (where column-major A
///    with ld_packed rows has its depth k0), ld_packed = padded_rows(rows).
/// Packed once by the caller, A is not re-packed for every call (every column block). Few rows
/// (up to kPanelOuterRows) stream each weight panel through its whole depth and read A in place.
template <class W, class P = std::uint32_t>
void many_rows_matmul(const float* a, Index lda, Index rows, const W* w, Index ldw, Index depth, Index cols,
                      float* c, Index ldc, const P* a_packed = nullptr, Index ld_packed = 0) {
  static_assert(
      std::is_same_v<W, float> || std::is_same_v<W, Eigen::bfloat16> || std::is_same_v<W, Eigen::half>,
      "many_rows_matmul: weights are float, Eigen::bfloat16 or Eigen::half");
  static_assert(std::is_same_v<P, std::uint32_t> || std::is_same_v<P, float>,
                "many_rows_matmul: packed activations are bf16 pairs (std::uint32_t) or token tiles (float)");
  const Index prows = padded_rows(rows);
#if defined(__AVX512BF16__) && MOE_BF16_DOT
  if constexpr (std::is_same_v<W, Eigen::bfloat16> && std::is_same_v<P, std::uint32_t>) {
    if (a_packed) return many_rows_matmul_pairs(a_packed, ld_packed, rows, w, ldw, depth, cols, c, ldc);
    return many_rows_matmul_pack_pairs(a, lda, prows, w, ldw, depth, cols, c, ldc);
  }
#endif
  // (Internal callers only; a wrong layout would be a silent wrong answer, so it is checked.)
  MOE_CHECK(
      !a_packed || (std::is_same_v<P, float> && kPackTokenTiles && ld_packed == prows),
      "many_rows_matmul: packed activations this build does not read for these weights, or token tiles of "
          << ld_packed << " rows for " << prows);
  alignas(64) float panel[std::is_same_v<W, float> ? 1 : kPanelCols * kDepthBlock];
  const WeightPanelProduct<W> product{
      w, ldw, depth, cols, c, ldc, panel_cols(prows), prows <= kPanelOuterRows, panel};
  if constexpr (std::is_same_v<P, float>) {
    if (a_packed) {  // token tiles packed by the caller: every depth block ready, in either loop order
      for_each_panel(
          depth, kDepthBlock, cols, product.panel_width, product.panel_outer,
          [&](Index k0, Index j0) { product(k0, j0, a_packed + k0 * ld_packed, 0, 0, prows, true, true); });
      return;
    }
  }
  if (kPackTokenTiles && !product.panel_outer) return many_rows_matmul_pack_tiles(a, lda, prows, product);
  for_each_panel(depth, kDepthBlock, cols, product.panel_width, product.panel_outer,
                 [&](Index k0, Index j0) { product(k0, j0, a + k0 * lda, lda, 0, prows, false, true); });
}

}  // namespace moe::detail
