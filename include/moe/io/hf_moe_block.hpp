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

/// Experts stored as experts.{e}.{gate}.weight, ….{up}.weight ([m, d] each) and ….{down}.weight
/// ([d, m]), as Hugging Face linears.
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

/// DBRX's experts: experts.mlp.w1, v1 and w2, each [N·m, d]: w1[e] and v1[e] are the gate and up
/// linears ([m, d]: x·w1ᵀ), w2[e] is used as is (h·w2).
inline std::vector<FfnWeights<float>> hf_dbrx_experts(const HfTensors& t, int n, Index d, Index m) {
  const std::vector<float> w1 = t.load("experts.mlp.w1", {n * m, d});
  const std::vector<float> v1 = t.load("experts.mlp.v1", {n * m, d});
  const std::vector<float> w2 = t.load("experts.mlp.w2", {n * m, d});
  std::vector<FfnWeights<float>> experts(static_cast<std::size_t>(n));
  for (int e = 0; e < n; ++e) {
    const std::size_t off = static_cast<std::size_t>(e) * m * d;
    auto& w = experts[static_cast<std::size_t>(e)];
    w.gate = Eigen::Map<const ColMatrix<float>>(w1.data() + off, d, m);
    w.up = Eigen::Map<const ColMatrix<float>>(v1.data() + off, d, m);
    w.down = Eigen::Map<const RowMatrix<float>>(w2.data() + off, m, d);
  }
  return experts;
}

/// GPT-OSS's experts: stacked and interleaved (hf_stacked_experts), with their biases
/// experts.gate_up_proj_bias [N, 2m] (gate and up interleaved) and experts.down_proj_bias [N, d].
inline std::vector<FfnWeights<float>> hf_gpt_oss_experts(const HfTensors& t, int n, Index d, Index m) {
  std::vector<FfnWeights<float>> experts =
      hf_stacked_experts(t, "experts.gate_up_proj", "experts.down_proj", n, d, m, /*interleaved=*/true);
  const std::vector<float> gub = t.load("experts.gate_up_proj_bias", {n, 2 * m});
  const std::vector<float> db = t.load("experts.down_proj_bias", {n, d});
  for (int e = 0; e < n; ++e) {
    const Eigen::Map<const Eigen::VectorXf> b(gub.data() + static_cast<std::size_t>(e) * 2 * m, 2 * m);
    auto& w = experts[static_cast<std::size_t>(e)];
    w.gate_bias = b(Eigen::seqN(0, m, 2));
    w.up_bias = b(Eigen::seqN(1, m, 2));
    w.down_bias = Eigen::Map<const Eigen::VectorXf>(db.data() + static_cast<std::size_t>(e) * d, d);
  }
  return experts;
}

/// How a family stores its routed experts.
enum class HfExperts {
  kIndexed,  ///< experts.{e}.{names}.weight (hf_indexed_experts)
  kStacked,  ///< experts.gate_up_proj [N, d, 2m] (gate, then up) and experts.down_proj [N, m, d]
  kGptOss,   ///< the same interleaved by column, with biases (hf_gpt_oss_experts)
  kDbrx,     ///< experts.mlp.{w1, v1, w2} (hf_dbrx_experts)
};

/// One MoE family's block as its config.json and Hub checkpoints describe it: the keys of its sizes,
/// the names of its tensors, how its config sets the router's semantics (a preset of presets.hpp)
/// and which shared experts it adds. load_hf_moe_block reads a block through its row of
/// hf_moe_family_table().
struct HfMoeFamily {
  const char* model_type;
  const char* sizes_object;    ///< the config object holding N, k and m (DBRX's ffn_config), or nullptr
  const char* model_dim;       ///< d
  const char* num_experts;     ///< N
  const char* top_k;           ///< k
  const char* top_k_alias;     ///< read when top_k is absent, or nullptr
  int top_k_default;           ///< k when neither key is there (0: the key is required)
  const char* expert_dim;      ///< m
  const char* router;          ///< the router weight [N, d]
  const char* router_bias;     ///< its bias [N], or nullptr
  const char* selection_bias;  ///< a bias [N] added to the scores for selection only, or nullptr
  HfExperts experts;
  const char* expert_names[3];  ///< kIndexed: the gate, up and down linears
  MoEConfig (*routing)(const HfConfig& c, int k);
  /// Adds the family's always-on experts (nullptr: none).
  void (*shared)(const HfConfig& c, const HfTensors& t, Index d, Index m, MoELayer<float>& layer);
};

inline MoEConfig hf_qwen2_routing(const HfConfig& c, int k) {
  return presets::qwen2_moe(k, c.boolean_or("norm_topk_prob", false));
}
inline MoEConfig hf_qwen3_routing(const HfConfig& c, int k) {
  return presets::qwen3_moe(k, c.boolean_or("norm_topk_prob", false));
}
inline MoEConfig hf_olmoe_routing(const HfConfig& c, int k) {
  return presets::olmoe(k, c.boolean_or("norm_topk_prob", false));
}

/// DeepSeek-V2: softmax scores, greedy or group-limited greedy top-k.
inline MoEConfig hf_deepseek_v2_routing(const HfConfig& c, int k) {
  const std::string scoring = c.string_or("scoring_func", "softmax");
  MOE_CHECK(scoring == "softmax",
            "config.json (deepseek_v2): scoring_func '" << scoring << "' (softmax only)");
  const std::string method = c.string_or("topk_method", "greedy");
  MOE_CHECK(method == "greedy" || method == "group_limited_greedy",
            "config.json (deepseek_v2): topk_method '" << method << "' (greedy or group_limited_greedy)");
  const bool grouped = method == "group_limited_greedy";
  return presets::deepseek_v2(
      k, grouped, grouped ? c.integer("n_group") : 1, grouped ? c.integer("topk_group") : 1,
      c.number_or("routed_scaling_factor", 1.0), c.boolean_or("norm_topk_prob", false));
}

/// DeepSeek-V3 and GLM-4-MoE: sigmoid scores, selection biased by e_score_correction_bias (noaux_tc).
inline MoEConfig hf_deepseek_v3_routing(const HfConfig& c, int k) {
  const std::string scoring = c.string_or("scoring_func", "sigmoid");
  MOE_CHECK(scoring == "sigmoid",
            "config.json (" << c.family() << "): scoring_func '" << scoring << "' (sigmoid only)");
  const std::string method = c.string_or("topk_method", "noaux_tc");
  MOE_CHECK(method == "noaux_tc",
            "config.json (" << c.family() << "): topk_method '" << method << "' (noaux_tc only)");
  return presets::deepseek_v3(k, c.integer("n_group"), c.integer("topk_group"),
                              c.number("routed_scaling_factor"), c.boolean_or("norm_topk_prob", true));
}

/// DBRX: ffn_config's SiLU experts and the p-norm of moe_normalize_expert_weights (null: none).
inline MoEConfig hf_dbrx_routing(const HfConfig& c, int k) {
  const HfConfig f = c.sub("ffn_config");
  const nlohmann::json& act = f.has("ffn_act_fn") ? f.json().at("ffn_act_fn") : nlohmann::json();
  const std::string name = act.is_object() ? act.value("name", std::string("silu")) : std::string("silu");
  MOE_CHECK(name == "silu", "config.json (dbrx): ffn_act_fn '" << name << "' is not supported (silu only)");
  std::optional<double> p = 1.0;
  if (f.json().contains("moe_normalize_expert_weights"))
    p = f.has("moe_normalize_expert_weights")
            ? std::optional<double>(f.number("moe_normalize_expert_weights"))
            : std::nullopt;
  return presets::dbrx(k, p);
}

/// One always-on expert of hidden width m named {name}.{gate,up,down}_proj.weight.
inline std::vector<FfnWeights<float>> hf_one_shared_expert(const HfTensors& t, const std::string& name,
                                                           Index d, Index m) {
  std::vector<FfnWeights<float>> shared;
  shared.push_back(hf_linear_ffn(t, name + ".gate_proj.weight", name + ".up_proj.weight",
                                 name + ".down_proj.weight", d, m));
  return shared;
}

/// Qwen2-MoE: a shared expert of shared_expert_intermediate_size, gated by sigmoid(x·w).
inline void hf_qwen2_shared(const HfConfig& c, const HfTensors& t, Index d, Index, MoELayer<float>& layer) {
  if (c.integer_or("shared_expert_intermediate_size", 0) == 0) return;
  auto shared = hf_one_shared_expert(t, "shared_expert", d, c.integer("shared_expert_intermediate_size"));
  const std::vector<float> g = t.load("shared_expert_gate.weight", {1, d});
  layer.set_shared_experts(std::move(shared), Eigen::Map<const Eigen::VectorXf>(g.data(), d));
}

/// DeepSeek and GLM-4-MoE: n_shared_experts experts of width m as one FFN of width m·n_shared.
inline void hf_deepseek_shared(const HfConfig& c, const HfTensors& t, Index d, Index m,
                               MoELayer<float>& layer) {
  if (c.integer_or("n_shared_experts", 0) == 0) return;
  layer.set_shared_experts(hf_one_shared_expert(t, "shared_experts", d, m * c.integer("n_shared_experts")));
}

/// Llama 4: one shared expert of the routed experts' width, always.
inline void hf_llama4_shared(const HfConfig&, const HfTensors& t, Index d, Index m, MoELayer<float>& layer) {
  layer.set_shared_experts(hf_one_shared_expert(t, "shared_expert", d, m));
}

/// The families load_hf_moe_block reads, a row each. Per row: model_type; sizes_object,
/// model_dim, num_experts, top_k, top_k_alias, top_k_default, expert_dim (config keys); router,
/// router_bias, selection_bias (tensors); experts, expert_names; routing; shared (HfMoeFamily).
inline const std::vector<HfMoeFamily>& hf_moe_family_table() {
  using E = HfExperts;
  const char* const hs = "hidden_size";
  const char* const tok = "num_experts_per_tok";
  const char* const moe_m = "moe_intermediate_size";
  const auto mixtral = [](const HfConfig&, int k) { return presets::mixtral(k); };
  const auto llama4 = [](const HfConfig&, int k) { return presets::llama4(k); };
  const auto gpt_oss = [](const HfConfig& c, int k) {
    return presets::gpt_oss(k, c.number_or("swiglu_limit", 7.0));
  };
  // clang-format off
  static const std::vector<HfMoeFamily> table = {
      {"mixtral", nullptr, hs, "num_local_experts", tok, nullptr, 0, "intermediate_size",
       "gate.weight", nullptr, nullptr, E::kIndexed, {"w1", "w3", "w2"}, mixtral, nullptr},
      {"qwen2_moe", nullptr, hs, "num_experts", tok, nullptr, 0, moe_m,
       "gate.weight", nullptr, nullptr, E::kIndexed, {"gate_proj", "up_proj", "down_proj"}, hf_qwen2_routing,
       hf_qwen2_shared},
      {"qwen3_moe", nullptr, hs, "num_experts", tok, nullptr, 0, moe_m,
       "gate.weight", nullptr, nullptr, E::kIndexed, {"gate_proj", "up_proj", "down_proj"}, hf_qwen3_routing,
       nullptr},
      {"olmoe", nullptr, hs, "num_experts", tok, nullptr, 0, "intermediate_size",
       "gate.weight", nullptr, nullptr, E::kIndexed, {"gate_proj", "up_proj", "down_proj"}, hf_olmoe_routing,
       nullptr},
      {"deepseek_v2", nullptr, hs, "n_routed_experts", tok, nullptr, 0, moe_m,
       "gate.weight", nullptr, nullptr, E::kIndexed, {"gate_proj", "up_proj", "down_proj"},
       hf_deepseek_v2_routing, hf_deepseek_shared},
      {"deepseek_v3", nullptr, hs, "n_routed_experts", tok, nullptr, 0, moe_m,
       "gate.weight", nullptr, "gate.e_score_correction_bias", E::kIndexed, {"gate_proj", "up_proj", "down_proj"},
       hf_deepseek_v3_routing, hf_deepseek_shared},
      {"glm4_moe", nullptr, hs, "n_routed_experts", tok, nullptr, 0, moe_m,
       "gate.weight", nullptr, "gate.e_score_correction_bias", E::kIndexed, {"gate_proj", "up_proj", "down_proj"},
       hf_deepseek_v3_routing, hf_deepseek_shared},
      {"llama4_text", nullptr, hs, "num_local_experts", tok, nullptr, 1, "intermediate_size",
       "router.weight", nullptr, nullptr, E::kStacked, {}, llama4, hf_llama4_shared},
      {"gpt_oss", nullptr, hs, "num_local_experts", tok, "experts_per_token", 0, "intermediate_size",
       "router.weight", "router.bias", nullptr, E::kGptOss, {}, gpt_oss, nullptr},
      {"dbrx", "ffn_config", "d_model", "moe_num_experts", "moe_top_k", nullptr, 0, "ffn_hidden_size",
       "router.layer.weight", nullptr, nullptr, E::kDbrx, {}, hf_dbrx_routing, nullptr},
  };
  // clang-format on
  return table;
}

/// The row of `model_type`, or nullptr.
inline const HfMoeFamily* find_hf_moe_family(const std::string& model_type) {
  for (const HfMoeFamily& f : hf_moe_family_table())
    if (model_type == f.model_type) return &f;
  return nullptr;
}

/// The family of `config` (or of its text_config, for a multimodal model); throws moe::Error
/// listing the known families otherwise. *block: the config object the family's keys are in.
inline const HfMoeFamily& hf_moe_family_of(const nlohmann::json& config, const nlohmann::json** block) {
  MOE_CHECK(config.is_object(), "config.json: expected a JSON object");
  *block = &config;
  std::string type = config.value("model_type", std::string());
  if (!find_hf_moe_family(type) && config.contains("text_config") && config.at("text_config").is_object()) {
    *block = &config.at("text_config");
    type = (*block)->value("model_type", std::string());
  }
  const HfMoeFamily* family = find_hf_moe_family(type);
  if (!family) {
    std::string list;
    for (const HfMoeFamily& f : hf_moe_family_table())
      list += (list.empty() ? "" : ", ") + std::string(f.model_type);
    MOE_CHECK(false,
              "config.json: model_type '" << type << "' is not a supported MoE family (" << list << ")");
  }
  return *family;
}

/// k of a block of family f: its top_k key, else its alias, else its default; a required key that
/// is missing is an error naming it.
inline int hf_top_k(const HfMoeFamily& f, const HfConfig& sizes) {
  if (sizes.has(f.top_k)) return sizes.integer(f.top_k);
  if (f.top_k_alias) return sizes.integer(f.top_k_alias);
  return f.top_k_default > 0 ? f.top_k_default : sizes.integer(f.top_k);
}

/// The routed experts of a block of family f, N experts of width m over d.
inline std::vector<FfnWeights<float>> hf_routed_experts(const HfMoeFamily& f, const HfTensors& t, int n,
                                                        Index d, Index m) {
  switch (f.experts) {
    case HfExperts::kIndexed:
      return hf_indexed_experts(t, n, d, m, f.expert_names[0], f.expert_names[1], f.expert_names[2]);
    case HfExperts::kStacked:
      return hf_stacked_experts(t, "experts.gate_up_proj", "experts.down_proj", n, d, m,
                                /*interleaved=*/false);
    case HfExperts::kGptOss:
      return hf_gpt_oss_experts(t, n, d, m);
    case HfExperts::kDbrx:
      return hf_dbrx_experts(t, n, d, m);
  }
  MOE_CHECK(false, "MoE block: unknown expert layout");
  return {};
}

}  // namespace detail

/// The model_type values load_hf_moe_block accepts.
inline std::vector<std::string> hf_moe_families() {
  std::vector<std::string> names;
  for (const detail::HfMoeFamily& f : detail::hf_moe_family_table()) names.emplace_back(f.model_type);
  return names;
}

/// Builds one MoE block from a Hugging Face config.json (`config`; a multimodal config's
/// `text_config` is used when its own model_type is not a MoE family) and the block's tensors in
/// `file` under `prefix` (e.g. "model.layers.0.mlp."). F32, F16, BF16 tensors, converted to float.
/// The family's row of detail::hf_moe_family_table() says which keys and tensors to read: the
/// sizes, the router (then its biases), the routed experts, then the shared experts. Throws
/// moe::Error for an unknown model_type, a missing required config key, a missing tensor or a
/// tensor of the wrong shape.
inline MoELayer<float> load_hf_moe_block(const nlohmann::json& config, const SafeTensorsFile& file,
                                         const std::string& prefix) {
  const nlohmann::json* block = nullptr;
  const detail::HfMoeFamily& f = detail::hf_moe_family_of(config, &block);
  const detail::HfConfig c(*block, f.model_type);
  const detail::HfConfig sizes = f.sizes_object ? c.sub(f.sizes_object) : c;
  const Index d = c.integer(f.model_dim);
  const int n = sizes.integer(f.num_experts);
  const int k = detail::hf_top_k(f, sizes);
  const Index m = sizes.integer(f.expert_dim);
  const MoEConfig routing = f.routing(c, k);

  const detail::HfTensors t(file, prefix);
  RouterGate<float> gate(t.linear(f.router, d, n));
  if (f.router_bias) gate.bias = t.vector(f.router_bias, n);
  if (f.selection_bias) gate.selection_bias = t.vector(f.selection_bias, n);
  MoELayer<float> layer(detail::hf_routed_experts(f, t, n, d, m), std::move(gate), routing);
  if (f.shared) f.shared(c, t, d, m, layer);
  return layer;
}

}  // namespace moe
