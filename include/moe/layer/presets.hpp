// moe — named MoEConfig settings that reproduce the router and expert semantics of real MoE
// families' reference code (Hugging Face modeling_*.py, the official DeepSeek inference code,
// LLaMA-MoE's smoe package). Each function says what it sets; layer/README.md's families table sums
// them up.
#pragma once

#include <cstdint>
#include <optional>

#include "moe/core/config.hpp"
#include "moe/layer/activation.hpp"
#include "moe/layer/moe_layer.hpp"
#include "moe/layer/router.hpp"

namespace moe::presets {

namespace detail {
inline RouterOptions softmax_top_k(bool renormalize) {
  RouterOptions r;
  r.score = ScoreFunction::kSoftmax;
  r.select = SelectOn::kScores;
  r.renormalize = renormalize ? Renormalize::kL1 : Renormalize::kNone;
  return r;
}
}  // namespace detail

/// LLaMA-MoE NumPy reference (shared/seeds): softmax over N, top-k of it, weights not
/// renormalised, output × N/k (formula 6; the scale is left unset so it follows k).
inline MoEConfig llama_moe_reference(int k) {
  return MoEConfig(k, detail::softmax_top_k(false), std::nullopt);
}

/// LLaMA-MoE released gate (TopKBalancedNoisyGate): logits tanh(x·W_1)·W_2 (a RouterGate with
/// mlp_out), top-k of the logits, softmax over the k; output × score_scale_factor. training: the
/// noisy gate z + n·(softplus(x·W_noise) + 0.01), n from SplitMix64(seed) (the gate needs `noise`).
inline MoEConfig llama_moe_gate(int k, double score_scale_factor, bool training = false,
                                std::uint64_t seed = 0) {
  RouterOptions r;
  r.score = ScoreFunction::kSoftmax;
  r.score_selected_only = true;
  r.noisy_gate = training;
  r.noise_epsilon = 0.01;
  r.noise_seed = seed;
  return MoEConfig(k, r, score_scale_factor);
}

/// Mixtral: softmax over N (fp32), top-k, renormalised to sum 1.
inline MoEConfig mixtral(int k = 2) { return MoEConfig(k, detail::softmax_top_k(true), 1.0); }

/// Qwen2-MoE: softmax, top-k, renormalised only if norm_topk_prob; its shared expert (gated by
/// sigmoid(x·w)) is set with MoELayer::set_shared_experts.
inline MoEConfig qwen2_moe(int k, bool norm_topk_prob) {
  return MoEConfig(k, detail::softmax_top_k(norm_topk_prob), 1.0);
}

/// Qwen3-MoE: softmax, top-k, norm_topk_prob switch; no shared expert.
inline MoEConfig qwen3_moe(int k, bool norm_topk_prob) {
  return MoEConfig(k, detail::softmax_top_k(norm_topk_prob), 1.0);
}

/// OLMoE: softmax, top-k, norm_topk_prob switch.
inline MoEConfig olmoe(int k, bool norm_topk_prob) {
  return MoEConfig(k, detail::softmax_top_k(norm_topk_prob), 1.0);
}

/// DeepSeek-V2 (MoEGate, scoring_func softmax): top-k of the softmax, with group_limited_greedy
/// first keeping the topk_group groups with the largest max score. As its reference code: when
/// k > 1 and norm_topk_prob, weights / (sum + 1e-20); otherwise weights × routed_scaling_factor.
/// Shared experts (ungated) via set_shared_experts.
inline MoEConfig deepseek_v2(int k, bool group_limited, int n_group, int topk_group,
                             double routed_scaling_factor, bool norm_topk_prob) {
  RouterOptions r = detail::softmax_top_k(false);
  if (group_limited) {
    r.n_group = n_group;
    r.topk_group = topk_group;
    r.group_score = GroupScore::kMax;
  }
  if (k > 1 && norm_topk_prob) {
    r.renormalize = Renormalize::kL1;
    r.renorm_epsilon = 1e-20;
  } else {
    r.routed_scaling_factor = routed_scaling_factor;
  }
  return MoEConfig(k, r, 1.0);
}

/// DeepSeek-V3 / GLM-4-MoE (noaux_tc): sigmoid scores; selection on score + e_score_correction_bias
/// (the RouterGate's selection_bias) inside the topk_group groups with the largest sum of their
/// top-2 selection values; weights the unbiased sigmoid scores, / (sum + 1e-20) if
/// norm_topk_prob, then × routed_scaling_factor. Ungated shared experts via set_shared_experts.
/// Experts outside the kept groups are excluded (the official DeepSeek code masks them with -inf;
/// HF's port fills 0.0, which differs only if fewer than k kept experts score above 0).
inline MoEConfig deepseek_v3(int k, int n_group, int topk_group, double routed_scaling_factor,
                             bool norm_topk_prob = true) {
  RouterOptions r;
  r.score = ScoreFunction::kSigmoid;
  r.select = SelectOn::kScores;
  r.n_group = n_group;
  r.topk_group = topk_group;
  r.group_score = GroupScore::kTop2Sum;
  if (norm_topk_prob) {
    r.renormalize = Renormalize::kL1;
    r.renorm_epsilon = 1e-20;
  }
  r.routed_scaling_factor = routed_scaling_factor;
  return MoEConfig(k, r, 1.0);
}

/// Llama 4: top-k of the raw logits, sigmoid of each selected logit (not renormalised); the
/// expert sees the input scaled by its score, E_i(s_i · x), combined with weight 1; the shared
/// expert is always added (set_shared_experts).
inline MoEConfig llama4(int k = 1) {
  RouterOptions r;
  r.score = ScoreFunction::kSigmoid;
  r.score_selected_only = true;
  return MoEConfig(k, r, 1.0, GluActivation::swiglu(), /*scale_in=*/true);
}

/// GPT-OSS: router with bias (RouterGate::bias); top-k of the logits, softmax over the k;
/// experts with biases and the clamped SwiGLU (limit = swiglu_limit, alpha 1.702).
inline MoEConfig gpt_oss(int k = 4, double swiglu_limit = 7.0) {
  RouterOptions r;
  r.score = ScoreFunction::kSoftmax;
  r.score_selected_only = true;
  return MoEConfig(k, r, 1.0, GluActivation::clamped_swiglu(swiglu_limit));
}

/// DBRX: softmax over N, top-k, weights / ||w||_p with p = moe_normalize_expert_weights (unset:
/// no renormalisation).
inline MoEConfig dbrx(int k = 4, std::optional<double> p = 1.0) {
  RouterOptions r = detail::softmax_top_k(false);
  if (p) {
    r.renormalize = Renormalize::kPNorm;
    r.renorm_p = *p;
  }
  return MoEConfig(k, r, 1.0);
}

/// Switch Transformer: top-1 of the softmax, weight = that probability; each expert takes at
/// most ceil(capacity_factor · T / N) tokens, first come by token order; a dropped token's MoE
/// output is zero (the residual connection carries it) and is counted in RoutingStats::dropped.
inline MoEConfig switch_transformer(double capacity_factor = 1.0) {
  RouterOptions r = detail::softmax_top_k(false);
  r.capacity_factor = capacity_factor;
  return MoEConfig(1, r, 1.0);
}

}  // namespace moe::presets
