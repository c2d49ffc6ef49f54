// moe — the gated feed-forward network, paper formulas (1) and (4): its workspace and forward.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/thread_pool.hpp"
#include "moe/core/types.hpp"
#include "moe/layer/activation.hpp"
#include "moe/layer/detail/ffn_blocks.hpp"
#include "moe/layer/detail/scratch_layout.hpp"
#include "moe/layer/detail/token_rows.hpp"
#include "moe/layer/ffn_weights.hpp"

namespace moe {

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
