// moe — a plain LLaMA decoder forward (Hugging Face LlamaForCausalLM semantics), to run
// calibration text through a dense model and collect each layer's FFN inputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/config.hpp"
#include "moe/hf_checkpoint.hpp"
#include "moe/hf_moe_block.hpp"
#include "moe/math.hpp"
#include "moe/moe_layer.hpp"
#include "moe/types.hpp"

namespace moe {

/// The fields of a LLaMA config.json the forward needs. Throws moe::Error on a missing key or a
/// variant this forward does not implement (rope scaling, attention or MLP biases, another act).
struct LlamaConfig {
  Index hidden = 0, intermediate = 0, vocab = 0, head_dim = 0;
  int layers = 0, heads = 0, kv_heads = 0;
  double rms_norm_eps = 1e-6, rope_theta = 10000;
  bool tied_embeddings = false;

  static LlamaConfig from_json(const nlohmann::json& j) {
    const detail::HfConfig c(j, "llama");
    LlamaConfig k;
    k.hidden = c.integer("hidden_size");
    k.intermediate = c.integer("intermediate_size");
    k.vocab = c.integer("vocab_size");
    k.layers = c.integer("num_hidden_layers");
    k.heads = c.integer("num_attention_heads");
    k.kv_heads = c.integer_or("num_key_value_heads", k.heads);
    k.head_dim = c.integer_or("head_dim", static_cast<int>(k.hidden / std::max(k.heads, 1)));
    k.rms_norm_eps = c.number_or("rms_norm_eps", 1e-6);
    k.tied_embeddings = c.boolean_or("tie_word_embeddings", false);
    MOE_CHECK(k.hidden > 0 && k.intermediate > 0 && k.vocab > 0 && k.layers > 0 && k.heads > 0 &&
                  k.kv_heads > 0 && k.head_dim > 0 && k.head_dim % 2 == 0 && k.heads % k.kv_heads == 0,
              "config.json (llama): inconsistent sizes (hidden, heads, kv heads, head_dim)");
    MOE_CHECK(c.string_or("hidden_act", "silu") == "silu", "config.json (llama): hidden_act must be silu");
    MOE_CHECK(!c.boolean_or("attention_bias", false) && !c.boolean_or("mlp_bias", false),
              "config.json (llama): attention or MLP biases are not supported");
    if (c.has("rope_parameters")) {  // transformers >= 5
      const detail::HfConfig r = c.sub("rope_parameters");
      MOE_CHECK(r.string_or("rope_type", "default") == "default",
                "config.json (llama): rope_type '" << r.string_or("rope_type", "") << "' is not supported");
      k.rope_theta = r.number_or("rope_theta", 10000);
    } else {
      MOE_CHECK(!c.has("rope_scaling"), "config.json (llama): rope_scaling is not supported");
      k.rope_theta = c.number_or("rope_theta", 10000);
    }
    return k;
  }
};

/// Mean next-token cross-entropy (nats) of logits (T x vocab) against ids: the prediction at
/// position t is scored on ids[t+1], T−1 predictions, in double.
inline double next_token_loss(const RowMatrix<float>& logits, const std::vector<std::int32_t>& ids) {
  MOE_CHECK(
      logits.rows() == static_cast<Index>(ids.size()) && logits.rows() >= 2,
      "next_token_loss: " << logits.rows() << " rows of logits for " << ids.size() << " ids (need >= 2)");
  double sum = 0;
  for (Index t = 0; t + 1 < logits.rows(); ++t) {
    const Eigen::RowVectorXd z = logits.row(t).cast<double>();
    const double m = z.maxCoeff();
    sum += m + std::log((z.array() - m).exp().sum()) - z(ids[static_cast<std::size_t>(t) + 1]);
  }
  return sum / static_cast<double>(logits.rows() - 1);
}

/// A dense LLaMA held as float weights (F32, F16 or BF16 checkpoints are converted on load), in
/// the math orientation (each an HF [out, in] tensor as the in x out column-major matrix).
/// forward() follows LlamaForCausalLM: embedding, per layer x += attn(rmsnorm(x)) with rotary
/// positions (rotate-half form) and a causal softmax, x += mlp(rmsnorm(x)), final norm, lm_head.
class LlamaModel {
 public:
  explicit LlamaModel(const HfCheckpoint& ckpt) : config_(LlamaConfig::from_json(ckpt.config())) {
    const Index d = config_.hidden, q = config_.heads * config_.head_dim,
                kv = config_.kv_heads * config_.head_dim;
    auto linear = [&](const std::string& name, Index in, Index out) {
      return detail::HfTensors(ckpt.file_of(name), "").linear(name, in, out);
    };
    auto vec = [&](const std::string& name, Index n) {
      return detail::HfTensors(ckpt.file_of(name), "").vector(name, n);
    };
    embed_ = linear("model.embed_tokens.weight", d, config_.vocab);
    lm_head_ = config_.tied_embeddings ? embed_ : linear("lm_head.weight", d, config_.vocab);
    norm_ = vec("model.norm.weight", d);
    for (int i = 0; i < config_.layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      Layer l;
      l.input_norm = vec(p + "input_layernorm.weight", d);
      l.post_norm = vec(p + "post_attention_layernorm.weight", d);
      l.wq = linear(p + "self_attn.q_proj.weight", d, q);
      l.wk = linear(p + "self_attn.k_proj.weight", d, kv);
      l.wv = linear(p + "self_attn.v_proj.weight", d, kv);
      l.wo = linear(p + "self_attn.o_proj.weight", q, d);
      l.gate = linear(p + "mlp.gate_proj.weight", d, config_.intermediate);
      l.up = linear(p + "mlp.up_proj.weight", d, config_.intermediate);
      l.down = linear(p + "mlp.down_proj.weight", config_.intermediate, d);
      layers_.push_back(std::move(l));
    }
  }

  const LlamaConfig& config() const { return config_; }

  /// Logits (T x vocab) for one sequence of token ids starting at position 0. mlp_inputs: if not
  /// null, receives each layer's MLP input (the post-attention RMSNorm output, T x d). moe: if not
  /// null, one MoELayer per decoder layer replacing its dense FFN (a LLaMA-MoE model: same
  /// attention, norms and embeddings, FFNs split into experts).
  RowMatrix<float> forward(const std::vector<std::int32_t>& ids,
                           std::vector<RowMatrix<float>>* mlp_inputs = nullptr,
                           const std::vector<MoELayer<float>>* moe = nullptr) const {
    MOE_CHECK(
        !moe || moe->size() == layers_.size(),
        "LlamaModel::forward: " << moe->size() << " MoE layers for " << layers_.size() << " decoder layers");
    const auto t_len = static_cast<Index>(ids.size());
    MOE_CHECK(t_len > 0, "LlamaModel::forward: no tokens");
    RowMatrix<float> x(t_len, config_.hidden);
    for (Index t = 0; t < t_len; ++t) {
      const std::int32_t id = ids[static_cast<std::size_t>(t)];
      MOE_CHECK(id >= 0 && id < config_.vocab, "LlamaModel::forward: token id " << id << " at position " << t
                                                                                << " outside [0, "
                                                                                << config_.vocab << ")");
      x.row(t) = embed_.col(id).transpose();
    }
    if (mlp_inputs) mlp_inputs->clear();
    const auto [cos, sin] = rope_tables(t_len);
    MoEWorkspace<float> ws;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      const RowMatrix<float> xn = rms_norm(x, l.input_norm);
      x += attention(l, xn, cos, sin);
      const RowMatrix<float> xm = rms_norm(x, l.post_norm);
      if (moe) {
        RowMatrix<float> y(t_len, config_.hidden);
        (*moe)[i].forward(xm, y, ws);
        x += y;
      } else {
        const RowMatrix<float> g = xm * l.gate;
        const RowMatrix<float> h = g.unaryExpr([](float z) { return silu(z); }).cwiseProduct(xm * l.up);
        x += h * l.down;
      }
      if (mlp_inputs) mlp_inputs->push_back(xm);
    }
    return rms_norm(x, norm_) * lm_head_;
  }

 private:
  struct Layer {
    Eigen::VectorXf input_norm, post_norm;
    ColMatrix<float> wq, wk, wv, wo, gate, up, down;
  };

  /// x / sqrt(mean(x²) + eps) ⊙ w, per row, the mean in float as HF LlamaRMSNorm computes it.
  RowMatrix<float> rms_norm(const RowMatrix<float>& x, const Eigen::VectorXf& w) const {
    RowMatrix<float> y(x.rows(), x.cols());
    for (Index t = 0; t < x.rows(); ++t) {
      const float var = x.row(t).squaredNorm() / static_cast<float>(x.cols());
      const float inv = 1.0f / std::sqrt(var + static_cast<float>(config_.rms_norm_eps));
      y.row(t) = (x.row(t) * inv).cwiseProduct(w.transpose());
    }
    return y;
  }

  /// cos/sin (T x head_dim/2) of position · θ^(−2i/head_dim), angles formed in float like HF.
  std::pair<RowMatrix<float>, RowMatrix<float>> rope_tables(Index t_len) const {
    const Index half = config_.head_dim / 2;
    RowMatrix<float> c(t_len, half), s(t_len, half);
    for (Index i = 0; i < half; ++i) {
      const auto inv_freq = static_cast<float>(
          1.0 / std::pow(config_.rope_theta, static_cast<double>(static_cast<float>(2 * i) /
                                                                 static_cast<float>(config_.head_dim))));
      for (Index t = 0; t < t_len; ++t) {
        const float angle = static_cast<float>(t) * inv_freq;
        c(t, i) = std::cos(angle);
        s(t, i) = std::sin(angle);
      }
    }
    return {c, s};
  }

  void apply_rope(RowMatrix<float>& m, int heads, const RowMatrix<float>& c,
                  const RowMatrix<float>& s) const {
    const Index hd = config_.head_dim, half = hd / 2;
    for (Index t = 0; t < m.rows(); ++t)
      for (int h = 0; h < heads; ++h)
        for (Index i = 0; i < half; ++i) {
          float& a = m(t, h * hd + i);
          float& b = m(t, h * hd + i + half);
          const float x1 = a, x2 = b;
          a = x1 * c(t, i) - x2 * s(t, i);
          b = x2 * c(t, i) + x1 * s(t, i);
        }
  }

  RowMatrix<float> attention(const Layer& l, const RowMatrix<float>& xn, const RowMatrix<float>& c,
                             const RowMatrix<float>& s) const {
    const Index t_len = xn.rows(), hd = config_.head_dim;
    RowMatrix<float> q = xn * l.wq, k = xn * l.wk;
    const RowMatrix<float> v = xn * l.wv;
    apply_rope(q, config_.heads, c, s);
    apply_rope(k, config_.kv_heads, c, s);
    RowMatrix<float> out(t_len, config_.heads * hd);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const int group = config_.heads / config_.kv_heads;
    std::vector<float> p(static_cast<std::size_t>(t_len));
    for (int h = 0; h < config_.heads; ++h) {
      const Index qo = h * hd, ko = (h / group) * hd;
      for (Index t = 0; t < t_len; ++t) {
        for (Index u = 0; u <= t; ++u)
          p[static_cast<std::size_t>(u)] = q.row(t).segment(qo, hd).dot(k.row(u).segment(ko, hd)) * scale;
        softmax(p.data(), static_cast<int>(t + 1), p.data());
        auto o = out.row(t).segment(qo, hd);
        o.setZero();
        for (Index u = 0; u <= t; ++u) o += p[static_cast<std::size_t>(u)] * v.row(u).segment(ko, hd);
      }
    }
    return out * l.wo;
  }

  LlamaConfig config_;
  ColMatrix<float> embed_, lm_head_;  // d x vocab
  Eigen::VectorXf norm_;
  std::vector<Layer> layers_;
};

}  // namespace moe
