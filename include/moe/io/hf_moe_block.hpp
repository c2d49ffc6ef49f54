// moe — one MoE block of a Hugging Face checkpoint (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
// DeepSeek-V2/V3, GLM-4-MoE, Llama 4, GPT-OSS, DBRX) as a MoELayer<float>: the family's router
// semantics from its config.json (presets.hpp), its tensors by the names Hub checkpoints use.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/layer/ffn.hpp"
#include "moe/layer/moe_layer.hpp"
#include "moe/layer/presets.hpp"
#include "moe/layer/router_gate.hpp"

namespace moe {

/// The model_type values load_hf_moe_block accepts.
inline const std::vector<std::string>& hf_moe_families() {
  static const std::vector<std::string> names = {"mixtral",     "qwen2_moe",   "qwen3_moe", "olmoe",
                                                 "deepseek_v2", "deepseek_v3", "glm4_moe",  "llama4_text",
                                                 "gpt_oss",     "dbrx"};
  return names;
}

namespace detail {

/// Typed access to config.json keys with errors that name the family and the key.
class HfConfig {
 public:
  HfConfig(const nlohmann::json& j, std::string family) : j_(j), family_(std::move(family)) {}
  const nlohmann::json& json() const { return j_; }

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  int integer(const char* key) const {
    MOE_CHECK(has(key), "config.json (" << family_ << "): missing required key '" << key << "'");
    return integer_at(key);
  }
  int integer_or(const char* key, int fallback) const { return has(key) ? integer_at(key) : fallback; }
  double number(const char* key) const {
    MOE_CHECK(has(key), "config.json (" << family_ << "): missing required key '" << key << "'");
    return number_at(key);
  }
  double number_or(const char* key, double fallback) const { return has(key) ? number_at(key) : fallback; }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    MOE_CHECK(j_.at(key).is_boolean(),
              "config.json (" << family_ << "): '" << key << "' must be true or false");
    return j_.at(key).get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    MOE_CHECK(j_.at(key).is_string(), "config.json (" << family_ << "): '" << key << "' must be a string");
    return j_.at(key).get<std::string>();
  }
  HfConfig sub(const char* key) const {
    MOE_CHECK(has(key) && j_.at(key).is_object(),
              "config.json (" << family_ << "): missing required object '" << key << "'");
    return HfConfig(j_.at(key), family_ + "." + key);
  }
  const std::string& family() const { return family_; }

 private:
  int integer_at(const char* key) const {
    const auto& v = j_.at(key);
    MOE_CHECK(
        v.is_number_integer() && v.get<long long>() >= 0 && v.get<long long>() < (1LL << 31),
        "config.json (" << family_ << "): '" << key << "' must be a non-negative integer, got " << v.dump());
    return v.get<int>();
  }
  double number_at(const char* key) const {
    const auto& v = j_.at(key);
    MOE_CHECK(v.is_number(),
              "config.json (" << family_ << "): '" << key << "' must be a number, got " << v.dump());
    return v.get<double>();
  }
  const nlohmann::json& j_;
  std::string family_;
};

/// Tensor access by prefix + name with shape checks; values converted to float.
class HfTensors {
 public:
  HfTensors(const SafeTensorsFile& file, std::string prefix) : file_(file), prefix_(std::move(prefix)) {}

  bool has(const std::string& name) const { return file_.contains(prefix_ + name); }
  /// The tensor `name`, which must have exactly `shape`; flattened row-major floats.
  std::vector<float> load(const std::string& name, const std::vector<std::int64_t>& shape) const {
    const std::string full = prefix_ + name;
    MOE_CHECK(file_.contains(full), "MoE block: missing tensor '" << full << "' in '" << file_.path() << "'");
    const TensorInfo& t = file_.info(full);
    MOE_CHECK(t.shape == shape, "MoE block: tensor '" << full << "' has shape " << shape_str(t.shape)
                                                      << ", expected " << shape_str(shape));
    MOE_CHECK(
        t.dtype == Dtype::F32 || t.dtype == Dtype::F16 || t.dtype == Dtype::BF16 || t.dtype == Dtype::F64,
        "MoE block: tensor '" << full << "' has dtype " << dtype_name(t.dtype)
                              << "; expected F32, F16 or BF16");
    return file_.to_float(full);
  }
  /// A HF linear weight [out, in] as the math-orientation in x out column-major matrix (same bytes).
  ColMatrix<float> linear(const std::string& name, Index in, Index out) const {
    const std::vector<float> v = load(name, {out, in});
    return Eigen::Map<const ColMatrix<float>>(v.data(), in, out);
  }
  Eigen::VectorXf vector(const std::string& name, Index n) const {
    const std::vector<float> v = load(name, {n});
    return Eigen::Map<const Eigen::VectorXf>(v.data(), n);
  }
  const std::string& prefix() const { return prefix_; }

 private:
  static std::string shape_str(const std::vector<std::int64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  const SafeTensorsFile& file_;
  std::string prefix_;
};

/// SwiGLU FFN from three HF linears named {gate}/{up}/{down} ([m, d], [m, d], [d, m]).
inline FfnWeights<float> hf_linear_ffn(const HfTensors& t, const std::string& gate, const std::string& up,
                                       const std::string& down, Index d, Index m) {
  return {t.linear(gate, d, m), t.linear(up, d, m), t.linear(down, m, d)};
}

/// Llama 4 / GPT-OSS stacked experts: gate_up [N, d, 2m] (x·gate_up; gate and up either as the
/// two halves of the last axis or interleaved by column), down [N, m, d] (h·down). Copied into
/// the column-major math orientation.
inline std::vector<FfnWeights<float>> hf_stacked_experts(const HfTensors& t, const std::string& gate_up_name,
                                                         const std::string& down_name, int n, Index d,
                                                         Index m, bool interleaved) {
  const std::vector<float> gu = t.load(gate_up_name, {n, d, 2 * m});
  const std::vector<float> dn = t.load(down_name, {n, m, d});
  std::vector<FfnWeights<float>> experts(static_cast<std::size_t>(n));
  for (int e = 0; e < n; ++e) {
    const Eigen::Map<const RowMatrix<float>> gue(gu.data() + static_cast<std::size_t>(e) * d * 2 * m, d,
                                                 2 * m);
    const Eigen::Map<const RowMatrix<float>> de(dn.data() + static_cast<std::size_t>(e) * m * d, m, d);
    auto& w = experts[static_cast<std::size_t>(e)];
    if (interleaved) {
      w.gate = gue(Eigen::all, Eigen::seqN(0, m, 2));
      w.up = gue(Eigen::all, Eigen::seqN(1, m, 2));
    } else {
      w.gate = gue.leftCols(m);
      w.up = gue.rightCols(m);
    }
    w.down = de;
  }
  return experts;
}

inline std::vector<FfnWeights<float>> hf_indexed_experts(const HfTensors& t, int n, Index d, Index m,
                                                         const char* gate, const char* up, const char* down) {
  std::vector<FfnWeights<float>> experts;
  experts.reserve(static_cast<std::size_t>(n));
  for (int e = 0; e < n; ++e) {
    const std::string p = "experts." + std::to_string(e) + ".";
    experts.push_back(hf_linear_ffn(t, p + gate + ".weight", p + up + ".weight", p + down + ".weight", d, m));
  }
  return experts;
}

}  // namespace detail

/// Builds one MoE block from a Hugging Face config.json (`config`; a multimodal config's
/// `text_config` is used when its own model_type is not a MoE family) and the block's tensors in
/// `file` under `prefix` (e.g. "model.layers.0.mlp."). F32, F16, BF16 tensors, converted to float.
/// Throws moe::Error for an unknown model_type, a missing required config key, a missing tensor
/// or a tensor of the wrong shape.
inline MoELayer<float> load_hf_moe_block(const nlohmann::json& config, const SafeTensorsFile& file,
                                         const std::string& prefix) {
  using detail::HfConfig;
  MOE_CHECK(config.is_object(), "config.json: expected a JSON object");
  const nlohmann::json* cj = &config;
  const auto known = [](const std::string& s) {
    for (const auto& f : hf_moe_families())
      if (f == s) return true;
    return false;
  };
  std::string type = config.value("model_type", std::string());
  if (!known(type) && config.contains("text_config") && config.at("text_config").is_object()) {
    cj = &config.at("text_config");
    type = cj->value("model_type", std::string());
  }
  if (!known(type)) {
    std::string list;
    for (const auto& f : hf_moe_families()) list += (list.empty() ? "" : ", ") + f;
    MOE_CHECK(false,
              "config.json: model_type '" << type << "' is not a supported MoE family (" << list << ")");
  }
  const HfConfig c(*cj, type);
  const detail::HfTensors t(file, prefix);

  if (type == "dbrx") {
    const HfConfig f = c.sub("ffn_config");
    const Index d = c.integer("d_model");
    const int n = f.integer("moe_num_experts"), k = f.integer("moe_top_k");
    const Index m = f.integer("ffn_hidden_size");
    const std::string act = f.has("ffn_act_fn") && f.json().at("ffn_act_fn").is_object()
                                ? f.json().at("ffn_act_fn").value("name", std::string("silu"))
                                : std::string("silu");
    MOE_CHECK(act == "silu", "config.json (dbrx): ffn_act_fn '" << act << "' is not supported (silu only)");
    std::optional<double> p = 1.0;
    if (f.json().contains("moe_normalize_expert_weights"))
      p = f.has("moe_normalize_expert_weights")
              ? std::optional<double>(f.number("moe_normalize_expert_weights"))
              : std::nullopt;
    RouterGate<float> gate(t.linear("router.layer.weight", d, n));  // router first: errors in file order
    const std::vector<float> w1 = t.load("experts.mlp.w1", {n * m, d});
    const std::vector<float> v1 = t.load("experts.mlp.v1", {n * m, d});
    const std::vector<float> w2 = t.load("experts.mlp.w2", {n * m, d});
    std::vector<FfnWeights<float>> experts(static_cast<std::size_t>(n));
    for (int e = 0; e < n; ++e) {
      const std::size_t off = static_cast<std::size_t>(e) * m * d;
      auto& w = experts[static_cast<std::size_t>(e)];
      w.gate = Eigen::Map<const ColMatrix<float>>(w1.data() + off, d, m);  // w1[e] is [m, d]: x·w1ᵀ
      w.up = Eigen::Map<const ColMatrix<float>>(v1.data() + off, d, m);
      w.down = Eigen::Map<const RowMatrix<float>>(w2.data() + off, m, d);  // w2[e] is [m, d]: h·w2
    }
    return MoELayer<float>(std::move(experts), std::move(gate), presets::dbrx(k, p));
  }

  const Index d = c.integer("hidden_size");
  if (type == "mixtral") {
    const int n = c.integer("num_local_experts"), k = c.integer("num_experts_per_tok");
    const Index m = c.integer("intermediate_size");
    RouterGate<float> gate(t.linear("gate.weight", d, n));  // router first: errors in file order
    return MoELayer<float>(detail::hf_indexed_experts(t, n, d, m, "w1", "w3", "w2"), std::move(gate),
                           presets::mixtral(k));
  }
  if (type == "qwen2_moe" || type == "qwen3_moe" || type == "olmoe") {
    const int n = c.integer("num_experts"), k = c.integer("num_experts_per_tok");
    const Index m = c.integer(type == "olmoe" ? "intermediate_size" : "moe_intermediate_size");
    const bool norm = c.boolean_or("norm_topk_prob", false);
    const MoEConfig cfg = type == "qwen2_moe"   ? presets::qwen2_moe(k, norm)
                          : type == "qwen3_moe" ? presets::qwen3_moe(k, norm)
                                                : presets::olmoe(k, norm);
    RouterGate<float> gate(t.linear("gate.weight", d, n));
    MoELayer<float> layer(detail::hf_indexed_experts(t, n, d, m, "gate_proj", "up_proj", "down_proj"),
                          std::move(gate), cfg);
    if (type == "qwen2_moe" && c.integer_or("shared_expert_intermediate_size", 0) > 0) {
      const Index ms = c.integer("shared_expert_intermediate_size");
      std::vector<FfnWeights<float>> shared;
      shared.push_back(detail::hf_linear_ffn(t, "shared_expert.gate_proj.weight",
                                             "shared_expert.up_proj.weight", "shared_expert.down_proj.weight",
                                             d, ms));
      const std::vector<float> g = t.load("shared_expert_gate.weight", {1, d});
      layer.set_shared_experts(std::move(shared), Eigen::Map<const Eigen::VectorXf>(g.data(), d));
    }
    return layer;
  }
  if (type == "deepseek_v2" || type == "deepseek_v3" || type == "glm4_moe") {
    const bool v2 = type == "deepseek_v2";
    const int n = c.integer("n_routed_experts"), k = c.integer("num_experts_per_tok");
    const Index m = c.integer("moe_intermediate_size");
    MoEConfig cfg;
    RouterGate<float> gate(t.linear("gate.weight", d, n));
    if (v2) {
      const std::string scoring = c.string_or("scoring_func", "softmax");
      MOE_CHECK(scoring == "softmax",
                "config.json (deepseek_v2): scoring_func '" << scoring << "' (softmax only)");
      const std::string method = c.string_or("topk_method", "greedy");
      MOE_CHECK(method == "greedy" || method == "group_limited_greedy",
                "config.json (deepseek_v2): topk_method '" << method << "' (greedy or group_limited_greedy)");
      const bool grouped = method == "group_limited_greedy";
      cfg = presets::deepseek_v2(
          k, grouped, grouped ? c.integer("n_group") : 1, grouped ? c.integer("topk_group") : 1,
          c.number_or("routed_scaling_factor", 1.0), c.boolean_or("norm_topk_prob", false));
    } else {
      const std::string scoring = c.string_or("scoring_func", "sigmoid");
      MOE_CHECK(scoring == "sigmoid",
                "config.json (" << type << "): scoring_func '" << scoring << "' (sigmoid only)");
      const std::string method = c.string_or("topk_method", "noaux_tc");
      MOE_CHECK(method == "noaux_tc",
                "config.json (" << type << "): topk_method '" << method << "' (noaux_tc only)");
      cfg = presets::deepseek_v3(k, c.integer("n_group"), c.integer("topk_group"),
                                 c.number("routed_scaling_factor"), c.boolean_or("norm_topk_prob", true));
      gate.selection_bias = t.vector("gate.e_score_correction_bias", n);
    }
    MoELayer<float> layer(detail::hf_indexed_experts(t, n, d, m, "gate_proj", "up_proj", "down_proj"),
                          std::move(gate), cfg);
    if (c.integer_or("n_shared_experts", 0) > 0) {
      const Index ms = m * c.integer("n_shared_experts");
      std::vector<FfnWeights<float>> shared;
      shared.push_back(detail::hf_linear_ffn(t, "shared_experts.gate_proj.weight",
                                             "shared_experts.up_proj.weight",
                                             "shared_experts.down_proj.weight", d, ms));
      layer.set_shared_experts(std::move(shared));
    }
    return layer;
  }
  if (type == "llama4_text") {
    const int n = c.integer("num_local_experts"), k = c.integer_or("num_experts_per_tok", 1);
    const Index m = c.integer("intermediate_size");
    RouterGate<float> gate(t.linear("router.weight", d, n));
    MoELayer<float> layer(detail::hf_stacked_experts(t, "experts.gate_up_proj", "experts.down_proj", n, d, m,
                                                     /*interleaved=*/false),
                          std::move(gate), presets::llama4(k));
    std::vector<FfnWeights<float>> shared;
    shared.push_back(detail::hf_linear_ffn(t, "shared_expert.gate_proj.weight",
                                           "shared_expert.up_proj.weight", "shared_expert.down_proj.weight",
                                           d, m));
    layer.set_shared_experts(std::move(shared));
    return layer;
  }
  // gpt_oss
  const int n = c.integer("num_local_experts");
  const int k =
      c.has("num_experts_per_tok") ? c.integer("num_experts_per_tok") : c.integer("experts_per_token");
  const Index m = c.integer("intermediate_size");
  RouterGate<float> gate(t.linear("router.weight", d, n));
  gate.bias = t.vector("router.bias", n);
  std::vector<FfnWeights<float>> experts = detail::hf_stacked_experts(
      t, "experts.gate_up_proj", "experts.down_proj", n, d, m, /*interleaved=*/true);
  const std::vector<float> gub = t.load("experts.gate_up_proj_bias", {n, 2 * m});
  const std::vector<float> db = t.load("experts.down_proj_bias", {n, d});
  for (int e = 0; e < n; ++e) {
    const Eigen::Map<const Eigen::VectorXf> b(gub.data() + static_cast<std::size_t>(e) * 2 * m, 2 * m);
    auto& w = experts[static_cast<std::size_t>(e)];
    w.gate_bias = b(Eigen::seqN(0, m, 2));
    w.up_bias = b(Eigen::seqN(1, m, 2));
    w.down_bias = Eigen::Map<const Eigen::VectorXf>(db.data() + static_cast<std::size_t>(e) * d, d);
  }
  return MoELayer<float>(std::move(experts), std::move(gate),
                         presets::gpt_oss(k, c.number_or("swiglu_limit", 7.0)));
}

}  // namespace moe
