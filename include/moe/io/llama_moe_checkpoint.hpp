// moe — LLaMA-MoE checkpoints (the pjlab-sys4nlp/llama-moe layout): writing the experts and router
// of a converted dense LLaMA layer, the matching config.json, and loading a layer back.
#pragma once

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/construction/partition.hpp"
#include "moe/core/config.hpp"
#include "moe/io/hf_checkpoint.hpp"
#include "moe/io/hf_llama.hpp"
#include "moe/io/hf_moe_block.hpp"
#include "moe/io/safetensors_writer.hpp"
#include "moe/layer/ffn.hpp"
#include "moe/layer/moe_layer.hpp"
#include "moe/layer/presets.hpp"
#include "moe/layer/router_gate.hpp"

namespace moe {

/// Tensor names of LLaMA-MoE layer i. Without residual experts (model_type llama_moe) the MoE sits
/// at model.layers.{i}.mlp.; with them (llama_moe_residual) at mlp.moe_layer., and the residual
/// experts at mlp.residual_block.calculator.experts.
struct LlamaMoENames {
  int layer;
  bool residual_model;

  std::string moe_prefix() const {
    return "model.layers." + std::to_string(layer) + ".mlp." + (residual_model ? "moe_layer." : "");
  }
  /// proj: "gate", "up" or "down"; weight_{gate,up}.{e} is [m_e, d], weight_down.{e} is [d, m_e].
  std::string expert(const char* proj, int e) const {
    return moe_prefix() + "calculator.experts.weight_" + proj + "." + std::to_string(e);
  }
  std::string residual_expert(const char* proj, int r) const {
    return "model.layers." + std::to_string(layer) + ".mlp.residual_block.calculator.experts.weight_" + proj +
           "." + std::to_string(r);
  }
  /// gate_network "mlp": gate_network.0.weight [N, d] and gate_network.2.weight [N, N];
  /// "linear": gate_network.weight [N, d]. weight_noise.weight [N, d] in both.
  std::string gate(const char* what) const { return moe_prefix() + "gate." + what; }
};

namespace detail {

/// Rows `rows` of a row-major [R, C] tensor, bytes copied as stored (any dtype).
inline std::vector<unsigned char> gather_rows(const SafeTensorsFile& f, const std::string& name,
                                              const std::vector<std::int32_t>& rows) {
  const TensorInfo& t = f.info(name);
  const std::size_t row_bytes = static_cast<std::size_t>(t.shape[1]) * dtype_size(t.dtype);
  std::vector<unsigned char> out(rows.size() * row_bytes);
  for (std::size_t r = 0; r < rows.size(); ++r)
    std::memcpy(out.data() + r * row_bytes, f.bytes(name) + static_cast<std::size_t>(rows[r]) * row_bytes,
                row_bytes);
  return out;
}

/// Columns `cols` of a row-major [R, C] tensor, bytes copied as stored (any dtype).
inline std::vector<unsigned char> gather_cols(const SafeTensorsFile& f, const std::string& name,
                                              const std::vector<std::int32_t>& cols) {
  const TensorInfo& t = f.info(name);
  const std::size_t es = dtype_size(t.dtype), c_total = static_cast<std::size_t>(t.shape[1]);
  const auto rows = static_cast<std::size_t>(t.shape[0]);
  std::vector<unsigned char> out(rows * cols.size() * es);
  const unsigned char* src = f.bytes(name);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols.size(); ++c)
      std::memcpy(out.data() + (r * cols.size() + c) * es,
                  src + (r * c_total + static_cast<std::size_t>(cols[c])) * es, es);
  return out;
}

inline void add_linear(SafeTensorsWriter& w, const std::string& name, const ColMatrix<float>& in_by_out) {
  // The math-orientation in x out column-major matrix is the HF [out, in] row-major tensor.
  w.add_bytes(name, Dtype::F32, {in_by_out.cols(), in_by_out.rows()}, in_by_out.data(),
              sizeof(float) * static_cast<std::size_t>(in_by_out.size()));
}

}  // namespace detail

/// Writes layer `layer`'s experts, sliced from the dense checkpoint by formula (3) as raw bytes (the
/// dense dtype is kept, every value bit for bit): expert e's weight_gate/weight_up are rows S_e of
/// gate_proj/up_proj.weight [d_h, d], weight_down is columns S_e of down_proj.weight [d, d_h].
/// residual: null, or the residual experts (written under residual_block).
inline void add_llama_moe_experts(SafeTensorsWriter& out, const HfCheckpoint& dense, int layer,
                                  const ExpertPartition& routed, const ExpertPartition* residual) {
  const std::string gate = detail::llama_mlp_name(layer, "gate_proj"),
                    up = detail::llama_mlp_name(layer, "up_proj"),
                    down = detail::llama_mlp_name(layer, "down_proj");
  const TensorInfo& g = dense.info(gate);
  const TensorInfo& u = dense.info(up);
  const TensorInfo& dn = dense.info(down);
  MOE_CHECK(
      g.shape.size() == 2 && u.shape == g.shape && dn.shape.size() == 2 && dn.shape[0] == g.shape[1] &&
          dn.shape[1] == g.shape[0] && g.dtype == u.dtype && g.dtype == dn.dtype,
      "LLaMA layer " << layer << ": gate_proj/up_proj must be [d_h, d] and down_proj [d, d_h], one dtype");
  MOE_CHECK(routed.hidden_dim() == g.shape[0],
            "LLaMA layer " << layer << ": partition is over d_h=" << routed.hidden_dim() << ", the layer has "
                           << g.shape[0]);
  const LlamaMoENames names{layer, residual != nullptr};
  const std::int64_t d = g.shape[1];
  auto write = [&](const std::vector<std::int32_t>& s, const std::string& ng, const std::string& nu,
                   const std::string& nd) {
    const auto m = static_cast<std::int64_t>(s.size());
    auto bytes = detail::gather_rows(dense.file_of(gate), gate, s);
    out.add_bytes(ng, g.dtype, {m, d}, bytes.data(), bytes.size());
    bytes = detail::gather_rows(dense.file_of(up), up, s);
    out.add_bytes(nu, g.dtype, {m, d}, bytes.data(), bytes.size());
    bytes = detail::gather_cols(dense.file_of(down), down, s);
    out.add_bytes(nd, g.dtype, {d, m}, bytes.data(), bytes.size());
  };
  for (int e = 0; e < routed.num_experts(); ++e)
    write(routed.expert(e), names.expert("gate", e), names.expert("up", e), names.expert("down", e));
  if (residual)
    for (int r = 0; r < residual->num_experts(); ++r)
      write(residual->expert(r), names.residual_expert("gate", r), names.residual_expert("up", r),
            names.residual_expert("down", r));
}

/// Writes layer `layer`'s router (F32): an MLP gate (mlp_out set) as gate_network.0/.2, a linear gate
/// as gate_network; weight_noise is the gate's noise weight, or zeros.
inline void add_llama_moe_gate(SafeTensorsWriter& out, int layer, const RouterGate<float>& gate,
                               bool residual_model) {
  MOE_CHECK(!gate.empty() && gate.bias.size() == 0 && gate.selection_bias.size() == 0,
            "LLaMA-MoE gate: needs a weight and has no bias");
  const LlamaMoENames names{layer, residual_model};
  if (gate.mlp_out.size()) {
    detail::add_linear(out, names.gate("gate_network.0.weight"), gate.weight);
    detail::add_linear(out, names.gate("gate_network.2.weight"), gate.mlp_out);
  } else {
    detail::add_linear(out, names.gate("gate_network.weight"), gate.weight);
  }
  detail::add_linear(
      out, names.gate("weight_noise.weight"),
      gate.noise.size() ? gate.noise : ColMatrix<float>::Zero(gate.model_dim(), gate.num_experts()));
}

/// config.json of the converted model: the dense config with LLaMA-MoE's fields. sizes[i][e] is
/// layer i's expert e size; residual_sizes is empty, or per layer the R residual expert sizes
/// (then model_type llama_moe_residual with its extra fields). gate_network: "mlp" or "linear".
inline nlohmann::json llama_moe_config(nlohmann::json dense, int top_k,
                                       const std::vector<std::vector<Index>>& sizes,
                                       const std::vector<std::vector<Index>>& residual_sizes,
                                       const std::string& gate_network, double score_scale_factor) {
  MOE_CHECK(!sizes.empty() && !sizes[0].empty(), "llama_moe_config: no experts");
  const bool residual = !residual_sizes.empty();
  dense["model_type"] = residual ? "llama_moe_residual" : "llama_moe";
  dense["architectures"] = {residual ? "LlamaMoEResidualForCausalLM" : "LlamaMoEForCausalLM"};
  dense["num_experts"] = sizes[0].size();
  dense["num_selects"] = top_k;
  dense["size_experts"] = sizes;
  dense["gate_type"] = "TopKBalancedNoisyGate";
  dense["gate_network"] = gate_network;
  dense["gate_use_softmax"] = true;
  dense["gate_use_balance"] = true;
  dense["gate_balance_loss_weight"] = 1e-2;
  dense["gate_add_noise"] = true;
  dense["gate_noise_epsilon"] = 1e-2;
  dense["calculator_type"] = "UniversalCalculator";
  dense["multiply_gate_scores"] = true;
  dense["score_scale_factor"] = score_scale_factor;
  dense["add_weight_norm"] = false;
  dense["drop_tokens"] = true;
  dense["dropped_padding"] = "zero";
  dense["capacity_factor"] = 1.25;
  if (residual) {
    Index moe = 0, res = 0;
    for (const Index s : sizes[0]) moe += s;
    for (const Index s : residual_sizes[0]) res += s;
    dense["num_experts_residual"] = residual_sizes[0].size();
    dense["size_experts_residual"] = residual_sizes;
    dense["score_scale_factor_residual"] = 1.0;
    dense["use_weighting"] = false;
    dense["intermediate_size_moe"] = moe;
    dense["intermediate_size_residual"] = res;
  }
  return dense;
}

namespace detail {

/// Checks what load_llama_moe_layer cannot reproduce and returns whether the model has residual
/// experts (llama_moe_residual).
inline bool check_llama_moe_config(const HfConfig& cfg) {
  const std::string type = cfg.string_or("model_type", "");
  MOE_CHECK(type == "llama_moe" || type == "llama_moe_residual",
            "config.json: model_type '" << type << "' is not llama_moe or llama_moe_residual");
  const bool residual = type == "llama_moe_residual";
  MOE_CHECK(cfg.string_or("gate_type", "TopKBalancedNoisyGate") == "TopKBalancedNoisyGate",
            "config.json (llama_moe): gate_type '" << cfg.string_or("gate_type", "") << "' is not supported");
  MOE_CHECK(cfg.string_or("calculator_type", "UniversalCalculator") == "UniversalCalculator",
            "config.json (llama_moe): calculator_type '" << cfg.string_or("calculator_type", "")
                                                         << "' is not supported");
  MOE_CHECK(
      cfg.boolean_or("gate_use_softmax", true) && cfg.boolean_or("multiply_gate_scores", true),
      "config.json (llama_moe): gate_use_softmax = false or multiply_gate_scores = false is not supported");
  MOE_CHECK(!residual || cfg.number_or("score_scale_factor_residual", 1.0) == 1.0,
            "config.json (llama_moe): score_scale_factor_residual other than 1 is not supported");
  return residual;
}

/// config[key][layer]: the `count` expert sizes of one layer, each a positive integer.
inline std::vector<Index> llama_moe_sizes(const HfConfig& cfg, const char* key, int layer, int count) {
  const auto layers = static_cast<std::size_t>(cfg.integer("num_hidden_layers"));
  MOE_CHECK(cfg.has(key) && cfg.json().at(key).is_array() && cfg.json().at(key).size() == layers,
            "config.json (llama_moe): '" << key << "' must list one array of sizes per layer");
  const nlohmann::json& row = cfg.json().at(key).at(static_cast<std::size_t>(layer));
  MOE_CHECK(row.is_array() && row.size() == static_cast<std::size_t>(count),
            "config.json (llama_moe): " << key << "[" << layer << "] must list " << count << " sizes");
  std::vector<Index> sizes;
  for (const auto& v : row) {
    MOE_CHECK(v.is_number_integer() && v.get<std::int64_t>() > 0,
              "config.json (llama_moe): " << key << "[" << layer
                                          << "] holds a size that is not a positive integer");
    sizes.push_back(v.get<Index>());
  }
  return sizes;
}

/// A HF linear weight [out, in] of the checkpoint, as the in x out math-orientation matrix.
inline ColMatrix<float> llama_moe_linear(const HfCheckpoint& ckpt, const std::string& name, Index in,
                                         Index out) {
  return HfTensors(ckpt.file_of(name), "").linear(name, in, out);
}

/// The routed (or, residual = true, the residual) experts of sizes[e] over d.
inline std::vector<FfnWeights<float>> load_llama_moe_experts(const HfCheckpoint& ckpt,
                                                             const LlamaMoENames& names, bool residual,
                                                             const std::vector<Index>& sizes, Index d) {
  std::vector<FfnWeights<float>> experts;
  experts.reserve(sizes.size());
  for (std::size_t e = 0; e < sizes.size(); ++e) {
    const auto name = [&](const char* proj) {
      return residual ? names.residual_expert(proj, static_cast<int>(e))
                      : names.expert(proj, static_cast<int>(e));
    };
    const Index m = sizes[e];
    experts.push_back(FfnWeights<float>{llama_moe_linear(ckpt, name("gate"), d, m),
                                        llama_moe_linear(ckpt, name("up"), d, m),
                                        llama_moe_linear(ckpt, name("down"), m, d)});
  }
  return experts;
}

/// The layer's gate: gate_network mlp (tanh(x·W₁)·W₂) or linear, and its noise weight if stored.
inline RouterGate<float> load_llama_moe_gate(const HfCheckpoint& ckpt, const HfConfig& cfg,
                                             const LlamaMoENames& names, Index d, int n) {
  const std::string net = cfg.string_or("gate_network", "mlp");
  RouterGate<float> gate;
  if (net == "mlp") {
    gate.weight = llama_moe_linear(ckpt, names.gate("gate_network.0.weight"), d, n);
    gate.mlp_out = llama_moe_linear(ckpt, names.gate("gate_network.2.weight"), n, n);
  } else {
    MOE_CHECK(net == "linear", "config.json (llama_moe): gate_network '" << net << "' is not mlp or linear");
    gate.weight = llama_moe_linear(ckpt, names.gate("gate_network.weight"), d, n);
  }
  if (ckpt.contains(names.gate("weight_noise.weight")))
    gate.noise = llama_moe_linear(ckpt, names.gate("weight_noise.weight"), d, n);
  return gate;
}

}  // namespace detail

/// Layer `layer` of a LLaMA-MoE checkpoint (llama_moe or llama_moe_residual, as written above or
/// by LLaMA-MoE's converters) as an owning MoELayer: experts of size_experts[layer], the MLP or
/// linear gate, top-k of the logits with a softmax over the k (gate_use_softmax), output ×
/// score_scale_factor, residual experts added unscaled. Settings this layer cannot reproduce
/// (another gate or calculator type, no softmax, unweighted scores, a residual scale other than 1)
/// throw moe::Error naming the key.
inline MoELayer<float> load_llama_moe_layer(const HfCheckpoint& ckpt, int layer) {
  const detail::HfConfig cfg(ckpt.config(), "llama_moe");
  const bool residual = detail::check_llama_moe_config(cfg);
  const int n = cfg.integer("num_experts"), k = cfg.integer("num_selects"), d = cfg.integer("hidden_size");
  const int layers = cfg.integer("num_hidden_layers");
  MOE_CHECK(layer >= 0 && layer < layers, "LLaMA-MoE: layer " << layer << " outside [0, " << layers << ")");
  const LlamaMoENames names{layer, residual};
  std::vector<FfnWeights<float>> experts = detail::load_llama_moe_experts(
      ckpt, names, false, detail::llama_moe_sizes(cfg, "size_experts", layer, n), d);
  MoELayer<float> moe_layer(std::move(experts), detail::load_llama_moe_gate(ckpt, cfg, names, d, n),
                            presets::llama_moe_gate(k, cfg.number_or("score_scale_factor", 1.0)));
  if (residual) {
    const int r = cfg.integer("num_experts_residual");
    moe_layer.set_shared_experts(detail::load_llama_moe_experts(
        ckpt, names, true, detail::llama_moe_sizes(cfg, "size_experts_residual", layer, r), d));
  }
  return moe_layer;
}

}  // namespace moe
