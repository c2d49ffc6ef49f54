// moe — Hugging Face LLaMA checkpoints: a layer's dense FFN straight from the safetensors bytes.
#pragma once

#include <string>

#include "moe/core/config.hpp"
#include "moe/io/hf_checkpoint.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/layer/ffn.hpp"

namespace moe {

namespace detail {
inline std::string llama_mlp_name(int layer, const char* proj) {
  return "model.layers." + std::to_string(layer) + ".mlp." + proj + ".weight";
}
/// Checks gate/up are [m, d] and down is [d, m]; returns {d, m}.
inline std::pair<Index, Index> llama_ffn_shape(const SafeTensorsFile& file, int layer) {
  const TensorInfo& g = file.info(llama_mlp_name(layer, "gate_proj"));
  const TensorInfo& u = file.info(llama_mlp_name(layer, "up_proj"));
  const TensorInfo& dn = file.info(llama_mlp_name(layer, "down_proj"));
  MOE_CHECK(g.shape.size() == 2 && u.shape == g.shape,
            "LLaMA layer " << layer << ": gate_proj and up_proj must both be [d_h, d]");
  MOE_CHECK(dn.shape.size() == 2 && dn.shape[0] == g.shape[1] && dn.shape[1] == g.shape[0],
            "LLaMA layer " << layer << ": down_proj must be [d, d_h] = [" << g.shape[1] << ", " << g.shape[0]
                           << "]");
  MOE_CHECK(g.shape[0] > 0 && g.shape[1] > 0, "LLaMA layer " << layer << ": empty FFN weights");
  MOE_CHECK(g.dtype == u.dtype && g.dtype == dn.dtype, "LLaMA layer " << layer << ": FFN weights mix dtypes");
  return {static_cast<Index>(g.shape[1]), static_cast<Index>(g.shape[0])};
}
}  // namespace detail

/// Zero-copy view of layer `layer`'s dense FFN (formula 1) in an F32 checkpoint:
/// model.layers.{i}.mlp.{gate,up,down}_proj.weight, stored [out, in] row-major, are W_gate, W_up
/// (d x d_h) and W_down (d_h x d) column-major, byte for byte. The file must outlive the view.
/// Throws moe::Error for a missing tensor, inconsistent shapes, or a non-F32 dtype (use
/// llama_ffn_weights to convert F16/BF16).
inline FfnWeightsView<float> llama_ffn_view(const SafeTensorsFile& file, int layer) {
  const auto [d, m] = detail::llama_ffn_shape(file, layer);
  return FfnWeightsView<float>(file.vector<float>(detail::llama_mlp_name(layer, "gate_proj")).data(),
                               file.vector<float>(detail::llama_mlp_name(layer, "up_proj")).data(),
                               file.vector<float>(detail::llama_mlp_name(layer, "down_proj")).data(), d, m);
}

/// Layer `layer`'s dense FFN converted to owned float weights (F32, F64, F16 or BF16 checkpoints).
inline FfnWeights<float> llama_ffn_weights(const SafeTensorsFile& file, int layer) {
  const auto [d, m] = detail::llama_ffn_shape(file, layer);
  auto load = [&](const char* proj, Index rows, Index cols) {
    const std::vector<float> v = file.to_float(detail::llama_mlp_name(layer, proj));
    return ColMatrix<float>(Eigen::Map<const ColMatrix<float>>(v.data(), rows, cols));
  };
  return {load("gate_proj", d, m), load("up_proj", d, m), load("down_proj", m, d)};
}

/// Layer `layer`'s dense FFN from a checkpoint directory (single file or shards), as owned floats.
inline FfnWeights<float> llama_ffn_weights(const HfCheckpoint& ckpt, int layer) {
  auto load = [&](const char* proj) {
    const std::string name = detail::llama_mlp_name(layer, proj);
    const TensorInfo& t = ckpt.info(name);
    MOE_CHECK(t.shape.size() == 2, "LLaMA layer " << layer << ": " << proj << " must be a matrix");
    const std::vector<float> v = ckpt.file_of(name).to_float(name);
    return ColMatrix<float>(Eigen::Map<const ColMatrix<float>>(v.data(), t.shape[1], t.shape[0]));
  };
  FfnWeights<float> w{load("gate_proj"), load("up_proj"), load("down_proj")};
  MOE_CHECK(w.up.rows() == w.gate.rows() && w.up.cols() == w.gate.cols() && w.down.rows() == w.gate.cols() &&
                w.down.cols() == w.gate.rows(),
            "LLaMA layer " << layer << ": gate_proj/up_proj must be [d_h, d] and down_proj [d, d_h]");
  return w;
}

}  // namespace moe
