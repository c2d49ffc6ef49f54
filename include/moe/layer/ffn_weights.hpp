// moe — the weights of one gated FFN (the dense FFN, formula 1, or one expert, formula 4): a
// zero-copy view, an owning copy, and the copy rounded to bf16 or half.
#pragma once

#include <type_traits>
#include <utility>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"

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

/// Activations of type T through weights stored as W: W = T, or float activations through
/// bfloat16 / half weights (widened exactly by the float kernels).
template <class T, class W>
constexpr bool kSupportedWeights = std::is_same_v<T, W> ||
                                   (std::is_same_v<T, float> &&
                                    (std::is_same_v<W, Eigen::bfloat16> || std::is_same_v<W, Eigen::half>));

}  // namespace detail

}  // namespace moe
