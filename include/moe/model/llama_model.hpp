// moe — a plain LLaMA decoder forward (Hugging Face LlamaForCausalLM semantics) with a KV cache,
// for dense LLaMA and LLaMA-MoE checkpoints: calibration for moe_convert, scoring for moe_eval,
// decoding for moe_generate.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/math.hpp"
#include "moe/core/types.hpp"
#include "moe/io/hf_checkpoint.hpp"
#include "moe/io/hf_moe_block.hpp"
#include "moe/io/llama_moe_checkpoint.hpp"
#include "moe/layer/moe_layer.hpp"

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

/// One sequence's state for LlamaModel::forward: every layer's keys (after the rotary embedding)
/// and values for the positions seen so far — the KV cache — plus the forward's scratch buffers,
/// sized once for `capacity` positions so that decoding a token reuses them. Make it with
/// LlamaModel::make_cache; clear() starts a new sequence at position 0.
struct LlamaCache {
  std::vector<RowMatrix<float>> keys, values;  ///< per layer: capacity x kv_heads·head_dim
  Index length = 0;                            ///< positions filled

  Index capacity() const { return keys.empty() ? 0 : keys.front().rows(); }
  void clear() { length = 0; }

 private:
  friend class LlamaModel;
  // Scratch, capacity rows each: residual stream, normed input, queries, attention output,
  // FFN gate/up, a d-wide product, the per-head scores (capacity x capacity), logits.
  RowMatrix<float> x_, xn_, q_, attn_, gate_, up_, y_, scores_, logits_;
  MoEWorkspace<float> ws_;
};

/// A LLaMA held as float weights (F32, F16 or BF16 checkpoints are converted on load), in the math
/// orientation (each an HF [out, in] tensor as the in x out column-major matrix): a dense
/// checkpoint (model_type llama), or a LLaMA-MoE one (llama_moe, llama_moe_residual: the FFNs are
/// MoELayers read by load_llama_moe_layer, router, experts, residual experts and scale factor).
/// forward() follows LlamaForCausalLM: embedding, per layer x += attn(rmsnorm(x)) with rotary
/// positions (rotate-half form), causal grouped-query attention over the KV cache, x +=
/// ffn(rmsnorm(x)), final norm, lm_head.
class LlamaModel {
 public:
  explicit LlamaModel(const HfCheckpoint& ckpt) : config_(LlamaConfig::from_json(ckpt.config())) {
    const std::string type = ckpt.config().value("model_type", std::string());
    MOE_CHECK(type == "llama" || type == "llama_moe" || type == "llama_moe_residual",
              "'" << ckpt.dir() << "/config.json': model_type '" << type
                  << "' is not llama, llama_moe or llama_moe_residual");
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
      if (type == "llama") {
        l.gate = linear(p + "mlp.gate_proj.weight", d, config_.intermediate);
        l.up = linear(p + "mlp.up_proj.weight", d, config_.intermediate);
        l.down = linear(p + "mlp.down_proj.weight", config_.intermediate, d);
      } else {
        moe_.push_back(load_llama_moe_layer(ckpt, i));
      }
      layers_.push_back(std::move(l));
    }
  }

  const LlamaConfig& config() const { return config_; }
  /// The MoE layers of a LLaMA-MoE checkpoint (empty for a dense one).
  const std::vector<MoELayer<float>>& moe_layers() const { return moe_; }

  /// A cache for sequences of up to `capacity` positions (all its memory allocated here).
  LlamaCache make_cache(Index capacity) const {
    MOE_CHECK(capacity > 0, "LlamaModel::make_cache: capacity must be positive, got " << capacity);
    const Index d = config_.hidden, q = config_.heads * config_.head_dim,
                kv = config_.kv_heads * config_.head_dim, dh = moe_.empty() ? config_.intermediate : 0;
    LlamaCache c;
    c.keys.assign(layers_.size(), RowMatrix<float>(capacity, kv));
    c.values.assign(layers_.size(), RowMatrix<float>(capacity, kv));
    c.x_.resize(capacity, d);
    c.xn_.resize(capacity, d);
    c.q_.resize(capacity, q);
    c.attn_.resize(capacity, q);
    c.gate_.resize(capacity, dh);
    c.up_.resize(capacity, dh);
    c.y_.resize(capacity, d);
    c.scores_.resize(capacity, capacity);
    c.logits_.resize(capacity, config_.vocab);
    for (const MoELayer<float>& m : moe_) c.ws_.reserve(m, capacity);
    return c;
  }

  /// Runs `ids` at positions cache.length … cache.length + T − 1 (the keys and values of earlier
  /// positions come from the cache; theirs are appended) and returns their logits, T x vocab — a
  /// view into the cache, valid until its next forward. Prefill is one call with the prompt,
  /// decoding one call per token; scoring a window is one call on a cleared cache. mlp_inputs: if
  /// not null, receives each layer's MLP input (the post-attention RMSNorm output, T x d). moe: if
  /// not null, one MoELayer per decoder layer replacing its FFN (what a LLaMA-MoE checkpoint loads
  /// by itself). routing: if not null and the FFNs are MoE layers, receives each layer's routing.
  Eigen::Ref<const RowMatrix<float>> forward(const std::vector<std::int32_t>& ids, LlamaCache& cache,
                                             std::vector<RowMatrix<float>>* mlp_inputs = nullptr,
                                             const std::vector<MoELayer<float>>* moe = nullptr,
                                             std::vector<RoutingRecord<float>>* routing = nullptr) const {
    if (!moe && !moe_.empty()) moe = &moe_;
    MOE_CHECK(
        !moe || moe->size() == layers_.size(),
        "LlamaModel::forward: " << moe->size() << " MoE layers for " << layers_.size() << " decoder layers");
    const auto t_len = static_cast<Index>(ids.size());
    const Index start = cache.length, end = start + t_len, kv = config_.kv_heads * config_.head_dim;
    MOE_CHECK(t_len > 0, "LlamaModel::forward: no tokens");
    MOE_CHECK(cache.keys.size() == layers_.size() && cache.keys.front().cols() == kv &&
                  cache.x_.cols() == config_.hidden && (moe || cache.gate_.cols() == config_.intermediate),
              "LlamaModel::forward: the cache was not made by this model's make_cache");
    MOE_CHECK(end <= cache.capacity(),
              "LlamaModel::forward: " << t_len << " tokens after " << start
                                      << " cached positions exceed the cache's capacity "
                                      << cache.capacity());
    if (routing) routing->assign(moe ? layers_.size() : 0, RoutingRecord<float>{});
    auto x = cache.x_.topRows(t_len);
    for (Index t = 0; t < t_len; ++t) {
      const std::int32_t id = ids[static_cast<std::size_t>(t)];
      MOE_CHECK(id >= 0 && id < config_.vocab, "LlamaModel::forward: token id "
                                                   << id << " at position " << start + t << " outside [0, "
                                                   << config_.vocab << ")");
      x.row(t) = embed_.col(id).transpose();
    }
    if (mlp_inputs) mlp_inputs->clear();
    auto xn = cache.xn_.topRows(t_len);
    auto y = cache.y_.topRows(t_len);
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      rms_norm(x, l.input_norm, xn);
      attention(l, cache, i, start, t_len);
      x += y;
      rms_norm(x, l.post_norm, xn);
      if (moe) {
        (*moe)[i].forward(xn, y, cache.ws_, nullptr, routing ? &(*routing)[i] : nullptr);
      } else {
        auto g = cache.gate_.topRows(t_len);
        auto u = cache.up_.topRows(t_len);
        g.noalias() = xn * l.gate;
        u.noalias() = xn * l.up;
        u = g.unaryExpr([](float z) { return silu(z); }).cwiseProduct(u);
        y.noalias() = u * l.down;
      }
      x += y;
      if (mlp_inputs) mlp_inputs->emplace_back(xn);
    }
    cache.length = end;
    rms_norm(x, norm_, xn);
    auto logits = cache.logits_.topRows(t_len);
    logits.noalias() = xn * lm_head_;
    return logits;
  }

  /// Logits (T x vocab) for one sequence of token ids starting at position 0, on a fresh cache
  /// (the arguments as for the cached forward).
  RowMatrix<float> forward(const std::vector<std::int32_t>& ids,
                           std::vector<RowMatrix<float>>* mlp_inputs = nullptr,
                           const std::vector<MoELayer<float>>* moe = nullptr,
                           std::vector<RoutingRecord<float>>* routing = nullptr) const {
    MOE_CHECK(!ids.empty(), "LlamaModel::forward: no tokens");
    LlamaCache cache = make_cache(static_cast<Index>(ids.size()));
    return forward(ids, cache, mlp_inputs, moe, routing);
  }

 private:
  struct Layer {
    Eigen::VectorXf input_norm, post_norm;
    ColMatrix<float> wq, wk, wv, wo, gate, up, down;
  };
  using RowsRef = Eigen::Ref<RowMatrix<float>>;

  /// y = x / sqrt(mean(x²) + eps) ⊙ w, per row, the mean in float as HF LlamaRMSNorm computes it.
  void rms_norm(const Eigen::Ref<const RowMatrix<float>>& x, const Eigen::VectorXf& w, RowsRef y) const {
    for (Index t = 0; t < x.rows(); ++t) {
      const float var = x.row(t).squaredNorm() / static_cast<float>(x.cols());
      const float inv = 1.0f / std::sqrt(var + static_cast<float>(config_.rms_norm_eps));
      y.row(t) = (x.row(t) * inv).cwiseProduct(w.transpose());
    }
  }

  /// Rotates rows of m (positions start, start + 1, …) in place, each head's halves (x1, x2) by
  /// position · θ^(−2i/head_dim) — the angle formed in float, as HF does.
  void apply_rope(RowsRef m, int heads, Index start) const {
    const Index hd = config_.head_dim, half = hd / 2;
    for (Index i = 0; i < half; ++i) {
      const auto inv_freq = static_cast<float>(
          1.0 / std::pow(config_.rope_theta, static_cast<double>(static_cast<float>(2 * i) /
                                                                 static_cast<float>(config_.head_dim))));
      for (Index t = 0; t < m.rows(); ++t) {
        const float angle = static_cast<float>(start + t) * inv_freq, c = std::cos(angle),
                    s = std::sin(angle);
        for (int h = 0; h < heads; ++h) {
          float& a = m(t, h * hd + i);
          float& b = m(t, h * hd + i + half);
          const float x1 = a, x2 = b;
          a = x1 * c - x2 * s;
          b = x2 * c + x1 * s;
        }
      }
    }
  }

  /// cache.y_ (T rows) = o_proj(attention of the T new positions over all cached ones).
  void attention(const Layer& l, LlamaCache& cache, std::size_t layer, Index start, Index t_len) const {
    const Index hd = config_.head_dim, len = start + t_len;
    const auto xn = cache.xn_.topRows(t_len);
    auto q = cache.q_.topRows(t_len);
    auto keys = cache.keys[layer].topRows(len);
    auto values = cache.values[layer].topRows(len);
    q.noalias() = xn * l.wq;
    keys.bottomRows(t_len).noalias() = xn * l.wk;
    values.bottomRows(t_len).noalias() = xn * l.wv;
    apply_rope(q, config_.heads, start);
    apply_rope(keys.bottomRows(t_len), config_.kv_heads, start);
    auto out = cache.attn_.topRows(t_len);
    auto scores = cache.scores_.topLeftCorner(t_len, len);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const int group = config_.heads / config_.kv_heads;
    for (int h = 0; h < config_.heads; ++h) {
      const Index qo = h * hd, ko = (h / group) * hd;  // GQA: `group` query heads share a KV head
      scores.noalias() = q.middleCols(qo, hd) * keys.middleCols(ko, hd).transpose();
      for (Index t = 0; t < t_len; ++t) {  // causal: position start + t sees 0 … start + t
        float* row = &scores(t, 0);
        const Index seen = start + t + 1;
        for (Index u = 0; u < seen; ++u) row[u] *= scale;
        softmax(row, static_cast<int>(seen), row);
        std::fill(row + seen, row + len, 0.0f);
      }
      out.middleCols(qo, hd).noalias() = scores * values.middleCols(ko, hd);
    }
    cache.y_.topRows(t_len).noalias() = out * l.wo;
  }

  LlamaConfig config_;
  ColMatrix<float> embed_, lm_head_;  // d x vocab
  Eigen::VectorXf norm_;
  std::vector<Layer> layers_;
  std::vector<MoELayer<float>> moe_;
};

}  // namespace moe
