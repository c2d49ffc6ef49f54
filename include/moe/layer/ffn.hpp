// moe — the SwiGLU feed-forward network, paper formulas (1) and (4).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/math.hpp"
#include "moe/core/thread_pool.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/activation.hpp"
#include "moe/layer/detail/few_rows_matmul.hpp"
#include "moe/layer/detail/many_rows_matmul.hpp"
#include "moe/layer/detail/transpose.hpp"

namespace moe {

/// Non-owning view of one SwiGLU FFN (dense, formula 1, or one expert, formula 4), math
/// orientation, column-major: gate, up: d x m; down: m x d. These are the bytes of Hugging Face's
/// gate_proj/up_proj.weight [m, d] and down_proj.weight [d, m] as stored, so a view over a
/// checkpoint needs no copy. The memory must outlive the view.
/// Optional biases (GPT-OSS experts): nullptr means none; gate_bias, up_bias: m values, added
/// before the activation; down_bias: d values, added to the output.
template <class T>
struct FfnWeightsView {
  ConstColMap<T> gate;           ///< W_gate, d x m
  ConstColMap<T> up;             ///< W_up,   d x m
  ConstColMap<T> down;           ///< W_down, m x d
  const T* gate_bias = nullptr;  ///< m, or nullptr
  const T* up_bias = nullptr;    ///< m, or nullptr
  const T* down_bias = nullptr;  ///< d, or nullptr

  FfnWeightsView(const T* gate_data, const T* up_data, const T* down_data, Index model_dim, Index hidden_dim)
      : gate(gate_data, model_dim, hidden_dim),
        up(up_data, model_dim, hidden_dim),
        down(down_data, hidden_dim, model_dim) {
    MOE_CHECK(model_dim > 0 && hidden_dim > 0,
              "FFN dimensions must be positive, got d=" << model_dim << " m=" << hidden_dim);
    MOE_CHECK(gate_data && up_data && down_data, "FFN weight pointer is null");
  }

  Index model_dim() const { return gate.rows(); }   ///< d
  Index hidden_dim() const { return gate.cols(); }  ///< m (d_h for the dense FFN)
};

/// Owning SwiGLU FFN weights (e.g. one sliced expert, formula 3), same orientation as the view.
/// Biases are optional: leave them empty for none.
template <class T>
struct FfnWeights {
  ColMatrix<T> gate;                              ///< d x m
  ColMatrix<T> up;                                ///< d x m
  ColMatrix<T> down;                              ///< m x d
  Eigen::Matrix<T, Eigen::Dynamic, 1> gate_bias;  ///< m, or empty
  Eigen::Matrix<T, Eigen::Dynamic, 1> up_bias;    ///< m, or empty
  Eigen::Matrix<T, Eigen::Dynamic, 1> down_bias;  ///< d, or empty

  FfnWeights() = default;
  /// The three matrices, no biases (so `{gate, up, down}` reads as before).
  FfnWeights(ColMatrix<T> g, ColMatrix<T> u, ColMatrix<T> d)
      : gate(std::move(g)), up(std::move(u)), down(std::move(d)) {}

  /// Checks the three shapes agree and returns a view. Throws moe::Error naming the mismatch.
  FfnWeightsView<T> view() const {
    MOE_CHECK(gate.rows() == up.rows() && gate.cols() == up.cols(),
              "FFN weights: W_gate is " << gate.rows() << "x" << gate.cols() << " but W_up is " << up.rows()
                                        << "x" << up.cols());
    MOE_CHECK(down.rows() == gate.cols() && down.cols() == gate.rows(),
              "FFN weights: W_down is " << down.rows() << "x" << down.cols() << ", expected " << gate.cols()
                                        << "x" << gate.rows());
    const auto bias = [](const auto& b, Index n, const char* what) -> const T* {
      MOE_CHECK(b.size() == 0 || b.size() == n,
                "FFN weights: " << what << " has " << b.size() << " values, expected " << n << " or none");
      return b.size() ? b.data() : nullptr;
    };
    FfnWeightsView<T> v(gate.data(), up.data(), down.data(), gate.rows(), gate.cols());
    v.gate_bias = bias(gate_bias, gate.cols(), "gate bias");
    v.up_bias = bias(up_bias, gate.cols(), "up bias");
    v.down_bias = bias(down_bias, gate.rows(), "down bias");
    return v;
  }
};

/// The same FFN with every weight and bias rounded to W (round to nearest, ties to even): e.g.
/// Eigen::bfloat16 or Eigen::half experts, run with float activations at half the bytes per call.
template <class W, class T>
FfnWeights<W> convert_weights(const FfnWeightsView<T>& w) {
  FfnWeights<W> out{w.gate.template cast<W>(), w.up.template cast<W>(), w.down.template cast<W>()};
  const auto bias = [](const T* b, Index n) {
    Eigen::Matrix<W, Eigen::Dynamic, 1> v;
    if (b) v = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(b, n).template cast<W>();
    return v;
  };
  out.gate_bias = bias(w.gate_bias, w.hidden_dim());
  out.up_bias = bias(w.up_bias, w.hidden_dim());
  out.down_bias = bias(w.down_bias, w.model_dim());
  return out;
}

namespace detail {

/// Column width of one task. Work is cut into (matrix, column block) tasks of this fixed width,
/// never by thread count, so every output element is computed by the same sequence of
/// operations whatever the pool size (bitwise determinism).
constexpr Index kColumnBlock = 256;

/// Up to this many token rows, an expert's products run column by column (matrix-vector
/// products) instead of as one GEMM (see MOE_FEW_ROWS in config.hpp).
constexpr Index kFewRows = MOE_FEW_ROWS;

inline Index num_column_blocks(Index cols) { return (cols + kColumnBlock - 1) / kColumnBlock; }

}  // namespace detail

namespace detail {

/// Rows of scratch kept for `rows` token rows. Past kFewRows the scratch is column-major, and in
/// float the many-rows kernel computes whole vectors of rows, so it is padded to those.
template <class T>
Index scratch_rows(Index rows) {
  return std::is_same_v<T, float> && rows > kFewRows ? padded_rows(rows) : rows;
}

/// Token rows per block of the column-major scratch. A GEMM's working set per depth block is its
/// token rows' inputs and outputs plus one column block of weights: at 512 rows, 512 KB of inputs
/// and 512 KB of outputs in float, past a 1 MB L2; in blocks of 128 rows it fits. Zen 4, three
/// alternating rounds: dense FFN T = 512 f32 789-807 -> 716-744 ms, bf16 401-413 -> 376-387;
/// N = 8 k = 2 MoE at T = 2048 (~512 rows per expert) f32 826-830 -> 750-771, bf16 423-452 -> 416-438.
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

/// Rows per gather task (gather_scratch_rows).
constexpr Index kGatherPanel = 16;
static_assert(!kPackTokenTiles || kGatherPanel == kTokenTileRows, "a gather panel is one token tile");

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
/// h column-major). Packing once, rather than in every matmul call (every column block of
/// W_gate, W_up and W_down repacked its row block's activations: 7% of the dense FFN's samples at
/// T = 512, gone after), Zen 3 (AVX2), moe_bench T = 512, medians of ten alternating rounds:
/// dense f32 1228 -> 1138 ms, bf16 1174 -> 1117; MoE N = 8 k = 2 f32 334 -> 319, bf16 307 -> 312.
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

#if defined(__AVX512F__)
/// Depths [k0, k0 + 16) of 16 token rows, row i scaled by f[i] (a null row: zeros), written
/// token-minor: depth k0 + j of row i at dst[j·ldd + i]. One 16 x 16 transpose in registers where
/// the scalar copy loads and stores each value alone: the bf16 MoE layer's gather into pairs at
/// T = 512 went from 2.2 to 1.1 ms on Zen 5 (the f32 gather, which writes twice the bytes, stayed
/// at 3-4 ms: it waits on memory). The same products as the scalar copy: f[i] · value, rounded once.
inline void gather_16x16(const float* const* s, const float* f, Index k0, float* dst, Index ldd) {
  __m512 r[16];
  for (int i = 0; i < 16; ++i)
    r[i] = s[i] ? _mm512_mul_ps(_mm512_set1_ps(f[i]), _mm512_loadu_ps(s[i] + k0)) : _mm512_setzero_ps();
  transpose_16x16(r);
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + j * ldd, r[j]);
}
#endif

/// Writes token rows into the input layout of with_scratch_layout: dst holds `rows` rows of d
/// values, row i = src_row(i) (a pointer to d values) times scale(i). Column-major rows are
/// written in panels of 16 (16 source rows read in step, each destination line written whole),
/// padding rows as zeros, each panel into its row block. Runs the panels [first, last) of 16
/// rows, so callers can split the work. packed (only where uses_packed_activations): the rows go
/// there instead, packed_width(d) elements per row (PackedScratch::x_width) — as bf16 pairs (the
/// same rounding as many_rows_matmul packing them itself), or as token tiles (a panel of 16 rows
/// is one tile) — and dst is not written (packed may be dst itself: token tiles take as much room).
template <class T, class SrcRow, class Scale, class P = std::uint32_t>
void gather_scratch_rows(Index rows, Index d, SrcRow&& src_row, Scale&& scale, T* dst, Index first,
                         Index last, P* packed = nullptr) {
  constexpr Index kPanel = kGatherPanel;
  if (rows <= kFewRows) {
    for (Index i = first * kPanel; i < std::min(rows, last * kPanel); ++i) {
      const T* s = src_row(i);
      const T f = scale(i);
      for (Index k = 0; k < d; ++k) dst[i * d + k] = f * s[k];
    }
    return;
  }
  static_assert(kRowBlock % kPanel == 0, "a panel lies in one row block");
  for (Index p = first; p < last; ++p) {
    const T* s[kPanel];
    T f[kPanel];
    // The panel's first token row r lies in row block blk, at row r0 of its ld rows.
    const Index r = p * kPanel;
    const RowBlock blk = row_block_of(rows, r);
    const Index ld = scratch_rows<T>(blk.rows), r0 = r - blk.first, n = std::min(kPanel, ld - r0);
    T* const block_dst = dst + blk.first * d;
    for (Index i = 0; i < n; ++i) {
      s[i] = r + i < rows ? src_row(r + i) : nullptr;
      f[i] = s[i] ? scale(r + i) : T(0);
    }
    if constexpr (std::is_same_v<T, float> && std::is_same_v<P, float> && kPackTokenTiles) {
      if (packed) {
        // Depth block by depth block, the panel's 16 rows are one tile: k-major, row-minor.
        for (Index k0 = 0; k0 < d; k0 += kDepthBlock) {
          const Index kc = std::min(kDepthBlock, d - k0);
          float* tile = packed + blk.first * d + k0 * ld + r0 * kc;
          for (Index k = 0; k < kc; ++k)
            for (Index i = 0; i < n; ++i) tile[k * n + i] = s[i] ? f[i] * s[i][k0 + k] : 0.0f;
        }
        continue;
      }
    }
#if defined(__AVX512BF16__) && MOE_BF16_DOT
    if constexpr (std::is_same_v<T, float> && std::is_same_v<P, std::uint32_t>) {
      std::uint32_t* pairs = packed;
      if (pairs) {
        // 32 depths of the panel at a time through a 2 KB block in L1, packed from there.
        static_assert(kPanel == 16, "pack_bf16_pairs takes rows in vectors of 16");
        constexpr Index kDepths = 32;
        alignas(64) float block[kDepths * kPanel];
        for (Index k0 = 0; k0 < d; k0 += kDepths) {
          const Index kc = std::min(kDepths, d - k0);
          Index k = 0;
          for (; k + 16 <= kc; k += 16) gather_16x16(s, f, k0 + k, block + k * kPanel, kPanel);
          for (; k < kc; ++k)
            for (Index i = 0; i < kPanel; ++i) block[k * kPanel + i] = s[i] ? f[i] * s[i][k0 + k] : 0.0f;
          pack_bf16_pairs(block, kPanel, kPanel, kc, pairs + blk.first * ((d + 1) / 2) + k0 / 2 * ld + r0,
                          ld);
        }
        continue;
      }
    }
#endif
    Index k0 = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>)
      if (n == kPanel)
        for (; k0 + 16 <= d; k0 += 16) gather_16x16(s, f, k0, block_dst + k0 * ld + r0, ld);
#endif
    for (Index k = k0; k < d; ++k)
      for (Index i = 0; i < n; ++i) block_dst[k * ld + r0 + i] = s[i] ? f[i] * s[i][k] : T(0);
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

/// h(:, c) = act(g(:, c) + gate_bias[c0 + c], h(:, c) + up_bias[c0 + c]) over a block, one loop
/// per activation so the switch is outside the element loop.
template <class B, class G, class H>
void apply_glu_block(const GluActivation& act, const B* gate_bias, const B* up_bias, Index c0, G& g, H& h) {
  using T = typename H::Scalar;
  const auto run = [&](auto&& f) {
    for (Index c = 0; c < h.cols(); ++c) {
      const T gb = gate_bias ? static_cast<T>(gate_bias[c0 + c]) : T(0);
      const T ub = up_bias ? static_cast<T>(up_bias[c0 + c]) : T(0);
      if (gate_bias || up_bias) {
        for (Index r = 0; r < h.rows(); ++r) h(r, c) = f(g(r, c) + gb, h(r, c) + ub);
      } else {
        for (Index r = 0; r < h.rows(); ++r) h(r, c) = f(g(r, c), h(r, c));
      }
    }
  };
  switch (act.kind) {
    case GluKind::kSwiGLU:
      run([](T gv, T uv) { return GluActivation::swiglu_value(gv, uv); });
      break;
    case GluKind::kGeGLU:
      run([](T gv, T uv) { return GluActivation::geglu_value(gv, uv); });
      break;
    case GluKind::kReGLU:
      run([](T gv, T uv) { return GluActivation::reglu_value(gv, uv); });
      break;
    case GluKind::kClampedSwiGLU: {
      const T limit = static_cast<T>(act.limit), alpha = static_cast<T>(act.alpha);
      run([=](T gv, T uv) { return GluActivation::clamped_swiglu_value(gv, uv, limit, alpha); });
      break;
    }
  }
}

/// Activations of type T through weights stored as W: W = T, or float activations through
/// bfloat16 / half weights (widened exactly by the float kernels).
template <class T, class W>
constexpr bool kSupportedWeights = std::is_same_v<T, W> ||
                                   (std::is_same_v<T, float> &&
                                    (std::is_same_v<W, Eigen::bfloat16> || std::is_same_v<W, Eigen::half>));

/// Columns [b*kColumnBlock, ...) of h: g = x·W_gate[:, blk], h = act(g, x·W_up[:, blk]) (biases
/// added first when the view has them; SwiGLU: h = (x·W_up) ⊙ Swish(g)).
/// packed (only where uses_packed_activations): x read from packed.x instead of x, and the block
/// of h also written to packed.h, packed for the down projection.
template <class W, class X, class G, class H, class P = std::uint32_t>
void glu_hidden_block(const FfnWeightsView<W>& w, const X& x, G& g, H& h, Index block,
                      const GluActivation& act = {}, const PackedScratch<P>& packed = {}) {
  using T = typename H::Scalar;
  static_assert(kSupportedWeights<T, W>, "weights stored as W need activations of the same type, or float");
  const Index c0 = block * kColumnBlock;
  const Index width = std::min(kColumnBlock, w.hidden_dim() - c0);
  auto gb = g.middleCols(c0, width);
  auto hb = h.middleCols(c0, width);
  if constexpr (std::is_same_v<T, float>) {
    // Float: this library's kernels. Few tokens (row-major): each weight column streams from
    // memory once and every token row uses it. Many (column-major, padded): a register-blocked
    // GEMM over token panels. Both read the weights in their stored layout.
    if constexpr (X::IsRowMajor) {
      few_rows_matmul(x.data(), x.outerStride(), x.rows(), w.gate.data() + c0 * w.gate.outerStride(),
                      w.gate.outerStride(), w.model_dim(), width, gb.data(), gb.outerStride(), 1);
      few_rows_matmul(x.data(), x.outerStride(), x.rows(), w.up.data() + c0 * w.up.outerStride(),
                      w.up.outerStride(), w.model_dim(), width, hb.data(), hb.outerStride(), 1);
    } else {
      many_rows_matmul(x.data(), x.outerStride(), x.rows(), w.gate.data() + c0 * w.gate.outerStride(),
                       w.gate.outerStride(), w.model_dim(), width, gb.data(), gb.outerStride(), packed.x,
                       packed.ld);
      many_rows_matmul(x.data(), x.outerStride(), x.rows(), w.up.data() + c0 * w.up.outerStride(),
                       w.up.outerStride(), w.model_dim(), width, hb.data(), hb.outerStride(), packed.x,
                       packed.ld);
    }
  } else if (x.rows() <= kFewRows) {
    // Other scalar types (double: the reference precision) through Eigen, one weight column at a
    // time for few rows (a GEMM would repack the weights for a handful of rows).
    for (Index j = 0; j < width; ++j) {
      gb.col(j).noalias() = x * w.gate.col(c0 + j);
      hb.col(j).noalias() = x * w.up.col(c0 + j);
    }
  } else {
    gb.noalias() = x * w.gate.middleCols(c0, width);
    hb.noalias() = x * w.up.middleCols(c0, width);
  }
  apply_glu_block(act, w.gate_bias, w.up_bias, c0, gb, hb);
  if constexpr (std::is_same_v<T, float> && !X::IsRowMajor && std::is_same_v<P, float> && kPackTokenTiles) {
    // The block is one depth block of W_down (kColumnBlock == kDepthBlock), whose tiles start
    // where column-major h has its column c0.
    static_assert(kColumnBlock == kDepthBlock, "a column block of h is a depth block of the down projection");
    if (packed.h)
      pack_token_tiles(hb.data(), hb.outerStride(), padded_rows(x.rows()), width, packed.h + c0 * packed.ld);
  }
#if defined(__AVX512BF16__) && MOE_BF16_DOT
  if constexpr (std::is_same_v<T, float> && !X::IsRowMajor && std::is_same_v<P, std::uint32_t>) {
    // c0 is even (a multiple of kColumnBlock), so the block's pairs are whole.
    if (packed.h)
      pack_bf16_pairs(hb.data(), hb.outerStride(), padded_rows(x.rows()), width,
                      packed.h + c0 / 2 * packed.ld, packed.ld);
  }
#endif
}

/// Columns [b*kColumnBlock, ...) of y = h·W_down.
/// packed.h (only where uses_packed_activations): h as glu_hidden_block packed it, read instead of h.
template <class W, class H, class Y, class P = std::uint32_t>
void down_proj_block(const FfnWeightsView<W>& w, const H& h, Y& y, Index block,
                     const PackedScratch<P>& packed = {}) {
  using T = typename Y::Scalar;
  static_assert(kSupportedWeights<T, W>, "weights stored as W need activations of the same type, or float");
  const Index c0 = block * kColumnBlock;
  const Index width = std::min(kColumnBlock, w.model_dim() - c0);
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (H::IsRowMajor)
      few_rows_matmul(h.data(), h.outerStride(), h.rows(), w.down.data() + c0 * w.down.outerStride(),
                      w.down.outerStride(), w.hidden_dim(), width, y.data() + c0, y.outerStride(), 1);
    else
      many_rows_matmul(h.data(), h.outerStride(), h.rows(), w.down.data() + c0 * w.down.outerStride(),
                       w.down.outerStride(), w.hidden_dim(), width, y.data() + c0 * y.outerStride(),
                       y.outerStride(), packed.h, packed.ld);
  } else if (h.rows() <= kFewRows) {
    for (Index j = 0; j < width; ++j) y.col(c0 + j).noalias() = h * w.down.col(c0 + j);
  } else {
    y.middleCols(c0, width).noalias() = h * w.down.middleCols(c0, width);
  }
  if (w.down_bias)
    for (Index j = 0; j < width; ++j) y.col(c0 + j).array() += static_cast<T>(w.down_bias[c0 + j]);
}

}  // namespace detail

/// Caller-owned scratch for ffn_forward: the input in the kernels' layout, x·W_gate and h (T x m
/// each) and the output (T x d); with bf16 weights and AVX512-BF16, also bf16-pair copies of the
/// input and h; in 8-lane builds (AVX2, portable), token tiles of h (detail::kFloatTiles).
/// Grows only when a call needs more than it holds; call reserve(weights, T) once and the forward
/// allocates nothing of its own.
template <class T>
class FfnWorkspace {
 public:
  /// Room for `tokens` rows through an FFN of width d = model_dim, hidden m = hidden_dim.
  void reserve(Index tokens, Index model_dim, Index hidden_dim) {
    const auto rows = static_cast<std::size_t>(detail::scratch_rows<T>(tokens));
    grow(input_, rows * static_cast<std::size_t>(model_dim));
    grow(gate_out_, rows * static_cast<std::size_t>(hidden_dim));
    grow(hidden_, rows * static_cast<std::size_t>(hidden_dim));
    grow(out_, rows * static_cast<std::size_t>(model_dim));
    // Token tiles of h (detail::kFloatTiles: 8-lane builds, whatever the weights' type).
    if (std::is_same_v<T, float> && detail::kPackTokenTiles && tokens > detail::kFewRows)
      grow(hidden_tiles_, rows * static_cast<std::size_t>(hidden_dim));
  }
  /// Room for `tokens` rows through `w`: the above, and with bf16 weights the bf16-pair copies of
  /// the activations their kernel reads (detail::uses_bf16_pairs).
  template <class W>
  void reserve(const FfnWeightsView<W>& w, Index tokens) {
    reserve(tokens, w.model_dim(), w.hidden_dim());
    if (detail::uses_bf16_pairs<T, W>(tokens)) {
      const auto rows = static_cast<std::size_t>(detail::scratch_rows<T>(tokens));
      grow(input_pairs_, rows * static_cast<std::size_t>((w.model_dim() + 1) / 2));
      grow(hidden_pairs_, rows * static_cast<std::size_t>((w.hidden_dim() + 1) / 2));
    }
  }
  /// h = (x·W_up) ⊙ Swish(x·W_gate) of the last forward (T x m): the input of W_down, the `h` of
  /// formula (5). A copy: the workspace keeps h in whichever layout that forward used.
  RowMatrix<T> hidden() const {
    if (last_tokens_ <= detail::kFewRows)
      return Eigen::Map<const RowMatrix<T>>(hidden_.data(), last_tokens_, last_hidden_);
    RowMatrix<T> h(last_tokens_, last_hidden_);
    for (Index b = 0; b < detail::num_row_blocks(last_tokens_); ++b) {
      const detail::RowBlock blk = detail::row_block(last_tokens_, b);
      h.middleRows(blk.first, blk.rows) = Eigen::Map<const ColMatrix<T>, 0, Eigen::OuterStride<>>(
          hidden_.data() + blk.first * last_hidden_, blk.rows, last_hidden_,
          Eigen::OuterStride<>(detail::scratch_rows<T>(blk.rows)));
    }
    return h;
  }

 private:
  template <class U, class W>
  friend void ffn_forward(const FfnWeightsView<W>&, const ConstRowRef<U>&, RowRef<U>, FfnWorkspace<U>&,
                          ThreadPool*, const GluActivation&);
  template <class V>
  static void grow(V& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
  }
  std::vector<T> input_, gate_out_, hidden_, out_;
  std::vector<std::uint32_t> input_pairs_, hidden_pairs_;  // detail::kBf16Pairs
  std::vector<T> hidden_tiles_;                            // detail::kFloatTiles
  Index last_tokens_ = 0, last_hidden_ = 0;
};

/// SwiGLU FFN forward, paper formula (1) (and (4) when `w` is an expert):
///   y = h·W_down,  h = (x·W_up) ⊙ Swish(x·W_gate),  Swish(z) = z·sigmoid(z).
/// `act` picks another gated activation (GeGLU, ReGLU, clamped SwiGLU); biases in `w` are added.
/// x: T x d row-major; y: T x d row-major (written, must not alias x). Accumulates in T.
/// Weights are stored as T, or, with float activations, as Eigen::bfloat16 or Eigen::half
/// (convert_weights): widened exactly, every product accumulated in float. Work is split in fixed column
/// blocks over `pool` (nullptr: the calling thread only); the result is bitwise the same for any pool size.
/// After the call, ws.hidden() returns h.
template <class T, class W>
void ffn_forward(const FfnWeightsView<W>& w, const ConstRowRef<T>& x, RowRef<T> y, FfnWorkspace<T>& ws,
                 ThreadPool* pool = nullptr, const GluActivation& act = {}) {
  static_assert(detail::kSupportedWeights<T, W>,
                "ffn_forward: weights as T, or bf16/half with float activations");
  const Index d = w.model_dim(), m = w.hidden_dim(), tokens = x.rows();
  MOE_CHECK(x.cols() == d, "ffn_forward: x has " << x.cols() << " columns, the FFN expects d=" << d);
  MOE_CHECK(y.rows() == tokens && y.cols() == d,
            "ffn_forward: y is " << y.rows() << "x" << y.cols() << ", expected " << tokens << "x" << d);
  if (tokens == 0) return;
  ws.reserve(w, tokens);
  ws.last_tokens_ = tokens;
  ws.last_hidden_ = m;
  detail::PackedScratch<detail::PackedElement<T, W>> packed;
  if (detail::uses_packed_activations<T, W>(tokens)) {
    const Index ld = detail::scratch_rows<T>(tokens);
    const Index xw = detail::packed_width<T, W>(d), hw = detail::packed_width<T, W>(m);
    if constexpr (detail::kBf16Pairs<T, W>)
      packed = {ws.input_pairs_.data(), ws.hidden_pairs_.data(), ld, xw, hw};
    else if constexpr (detail::kFloatTiles<T, W>)
      packed = {ws.input_.data(), ws.hidden_tiles_.data(), ld, xw, hw};
  }
  parallel_for(pool, detail::num_gather_panels<T>(tokens), [&](Index p) {
    detail::gather_scratch_rows<T>(
        tokens, d, [&](Index i) { return x.data() + i * x.outerStride(); }, [](Index) { return T(1); },
        ws.input_.data(), p, p + 1, packed.x);
  });
  // Tasks are column blocks; each runs its columns through every row block in turn.
  const auto row_blocks = [&](auto&& f) {
    detail::with_scratch_layout(tokens, m, d, ws.input_.data(), ws.gate_out_.data(), ws.hidden_.data(),
                                ws.out_.data(), f);
  };
  parallel_for(pool, detail::num_column_blocks(m), [&](Index b) {
    row_blocks([&](const auto& xs, auto& g, auto& h, auto&, const detail::RowBlock& blk) {
      detail::glu_hidden_block(w, xs, g, h, b, act, packed.block(blk));
    });
  });
  parallel_for(pool, detail::num_column_blocks(d), [&](Index b) {
    const Index c0 = b * detail::kColumnBlock;
    const Index width = std::min(detail::kColumnBlock, d - c0);
    row_blocks([&](const auto&, auto&, auto& h, auto& out, const detail::RowBlock& blk) {
      detail::down_proj_block(w, h, out, b, packed.block(blk));
      y.middleRows(blk.first, blk.rows).middleCols(c0, width) = out.middleCols(c0, width);
    });
  });
}

}  // namespace moe
