// moe — one column block of the gated FFN's two products: gate/up with the activation
// (glu_hidden_block) and down (down_proj_block), on this library's float kernels, or Eigen's for
// other scalar types. The tasks of ffn_forward and of every expert of MoELayer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/activation.hpp"
#include "moe/layer/detail/few_rows_matmul.hpp"
#include "moe/layer/detail/many_rows_matmul.hpp"
#include "moe/layer/detail/scratch_layout.hpp"
#include "moe/layer/ffn_weights.hpp"

namespace moe::detail {

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

}  // namespace moe::detail
