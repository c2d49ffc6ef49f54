// moe — the gated activations of an expert's hidden layer: h = act(x·W_gate, x·W_up).
// SwiGLU is paper formula (1); GeGLU, ReGLU and GPT-OSS's clamped SwiGLU are the variants real
// MoE checkpoints use.
#pragma once

#include <algorithm>
#include <cmath>

#include "moe/core/config.hpp"
#include "moe/core/math.hpp"

namespace moe {

enum class GluKind {
  kSwiGLU,         ///< up · Swish(gate)                          (LLaMA, Mixtral, Qwen, DeepSeek, ...)
  kGeGLU,          ///< up · GELU(gate), exact erf GELU
  kReGLU,          ///< up · max(gate, 0)
  kClampedSwiGLU,  ///< GPT-OSS: g = min(gate, limit), u = clamp(up, ±limit), (u + 1) · g · sigmoid(alpha · g)
};

/// A gated activation with its parameters (limit and alpha matter for kClampedSwiGLU only).
struct GluActivation {
  GluKind kind = GluKind::kSwiGLU;
  double limit = 7.0;    ///< GPT-OSS `swiglu_limit`
  double alpha = 1.702;  ///< GPT-OSS's sigmoid slope (the GELU approximation constant)

  static GluActivation swiglu() { return {}; }
  static GluActivation geglu() { return {GluKind::kGeGLU}; }
  static GluActivation reglu() { return {GluKind::kReGLU}; }
  static GluActivation clamped_swiglu(double limit = 7.0, double alpha = 1.702) {
    MOE_CHECK(std::isfinite(limit) && limit > 0, "clamped SwiGLU: limit " << limit << " must be positive");
    MOE_CHECK(std::isfinite(alpha), "clamped SwiGLU: alpha " << alpha << " is not finite");
    return {GluKind::kClampedSwiGLU, limit, alpha};
  }

  /// h for one (gate, up) pair, one function per kind, so a loop picks its kind once, outside the
  /// element loop (detail::apply_glu_block in detail/ffn_blocks.hpp).
  template <class T>
  static T swiglu_value(T gate, T up) {
    return up * silu(gate);
  }
  template <class T>
  static T geglu_value(T gate, T up) {
    return up * (T(0.5) * gate * (T(1) + std::erf(gate * T(0.70710678118654752440))));
  }
  template <class T>
  static T reglu_value(T gate, T up) {
    return up * std::max(gate, T(0));
  }
  template <class T>
  static T clamped_swiglu_value(T gate, T up, T limit, T alpha) {
    const T g = std::min(gate, limit);
    const T u = std::min(std::max(up, -limit), limit);
    return (u + T(1)) * (g * sigmoid(alpha * g));
  }
};

inline const char* glu_name(GluKind k) {
  switch (k) {
    case GluKind::kSwiGLU:
      return "swiglu";
    case GluKind::kGeGLU:
      return "geglu";
    case GluKind::kReGLU:
      return "reglu";
    case GluKind::kClampedSwiGLU:
      return "clamped-swiglu";
  }
  return "?";
}

}  // namespace moe
