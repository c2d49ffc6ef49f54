// Double-precision references of real MoE families' blocks, written from each family's reference
// code (HF modeling_*.py, DeepSeek's MoEGate, LLaMA-MoE's gate) as plain loops: one token at a
// time, scores over all experts, a stable sort for top-k (ties to the lower index), then the
// family's weighting, every expert's FFN written out, shared experts added. Shares no code with
// the library beyond Eigen's matrix types; softmax and the stable top-k are reference.hpp's.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "reference.hpp"

namespace ref::families {

using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;

/// One expert in math orientation: gate, up d x m; down m x d; biases empty or m / m / d.
struct Expert {
  Mat gate, up, down;
  Vec gate_bias, up_bias, down_bias;
};

/// One MoE block and its family's switches.
struct Block {
  std::string
      family;  // mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, llama4, gpt_oss, dbrx
  int k = 2;
  std::vector<Expert> experts;
  Mat router;       // d x N
  Vec router_bias;  // gpt_oss
  Vec correction;   // deepseek_v3 e_score_correction_bias
  std::vector<Expert> shared;
  Vec shared_gate;         // qwen2_moe
  bool norm_topk = false;  // qwen/olmoe/deepseek norm_topk_prob
  bool grouped = false;    // deepseek_v2 group_limited_greedy
  int n_group = 1, topk_group = 1;
  double rsf = 1.0;    // routed_scaling_factor
  double p = 1.0;      // dbrx moe_normalize_expert_weights
  double limit = 7.0;  // gpt_oss swiglu_limit
};

struct Routed {
  std::vector<int> ids;
  std::vector<double> w;
};

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

using ref::softmax;
inline std::vector<int> topk(const std::vector<double>& v, int k) { return ref::top_k(v, k); }

/// Keep the topk_group groups of consecutive experts with the best group score; -inf elsewhere.
inline std::vector<double> mask_groups(const std::vector<double>& v, int n_group, int topk_group,
                                       bool top2_sum) {
  const int size = static_cast<int>(v.size()) / n_group;
  std::vector<double> gs(static_cast<std::size_t>(n_group));
  for (int g = 0; g < n_group; ++g) {
    std::vector<double> grp(v.begin() + g * size, v.begin() + (g + 1) * size);
    std::sort(grp.rbegin(), grp.rend());
    gs[static_cast<std::size_t>(g)] = top2_sum ? grp[0] + grp[1] : grp[0];
  }
  const std::vector<int> keep = topk(gs, topk_group);
  std::vector<double> out(v.size(), -std::numeric_limits<double>::infinity());
  for (int g : keep)
    for (int i = g * size; i < (g + 1) * size; ++i)
      out[static_cast<std::size_t>(i)] = v[static_cast<std::size_t>(i)];
  return out;
}

inline Routed route(const Block& b, const std::vector<double>& z) {
  Routed r;
  const auto pick = [&](const std::vector<double>& w) {
    for (int i : r.ids) r.w.push_back(w[static_cast<std::size_t>(i)]);
  };
  const auto l1 = [&](double eps) {
    double s = 0;
    for (double v : r.w) s += v;
    for (double& v : r.w) v /= (s + eps);
  };
  const std::string& f = b.family;
  if (f == "mixtral" || f == "qwen2_moe" || f == "qwen3_moe" || f == "olmoe") {
    const auto p = softmax(z);
    r.ids = topk(p, b.k);
    pick(p);
    if (f == "mixtral" || b.norm_topk) l1(0.0);
  } else if (f == "deepseek_v2") {
    const auto p = softmax(z);
    r.ids = topk(b.grouped ? mask_groups(p, b.n_group, b.topk_group, false) : p, b.k);
    pick(p);
    if (b.k > 1 && b.norm_topk)
      l1(1e-20);
    else
      for (double& v : r.w) v *= b.rsf;
  } else if (f == "deepseek_v3") {
    std::vector<double> s(z.size()), c(z.size());
    for (std::size_t i = 0; i < z.size(); ++i) {
      s[i] = sigmoid(z[i]);
      c[i] = s[i] + b.correction[static_cast<Eigen::Index>(i)];
    }
    r.ids = topk(mask_groups(c, b.n_group, b.topk_group, true), b.k);
    pick(s);
    if (b.norm_topk) l1(1e-20);
    for (double& v : r.w) v *= b.rsf;
  } else if (f == "llama4") {
    r.ids = topk(z, b.k);
    for (int i : r.ids) r.w.push_back(sigmoid(z[static_cast<std::size_t>(i)]));
  } else if (f == "gpt_oss") {
    r.ids = topk(z, b.k);
    std::vector<double> sel;
    for (int i : r.ids) sel.push_back(z[static_cast<std::size_t>(i)]);
    r.w = softmax(sel);
  } else if (f == "dbrx") {
    const auto p = softmax(z);
    r.ids = topk(p, b.k);
    pick(p);
    double s = 0;
    for (double v : r.w) s += std::pow(std::abs(v), b.p);
    for (double& v : r.w) v /= std::pow(s, 1.0 / b.p);
  }
  return r;
}

/// One expert on one token (row vector x, d values): SwiGLU, or GPT-OSS's clamped form.
/// `clamped_hits` counts pre-activations the clamp changed (so a test can show it was exercised).
inline Vec expert(const Expert& e, const Vec& x, bool gpt_oss, double limit, long* clamped_hits = nullptr) {
  const Eigen::Index m = e.gate.cols(), d = e.gate.rows();
  Vec h(m);
  for (Eigen::Index j = 0; j < m; ++j) {
    double g = e.gate_bias.size() ? e.gate_bias(j) : 0.0, u = e.up_bias.size() ? e.up_bias(j) : 0.0;
    for (Eigen::Index i = 0; i < d; ++i) {
      g += x(i) * e.gate(i, j);
      u += x(i) * e.up(i, j);
    }
    if (gpt_oss) {
      if (clamped_hits && (g > limit || std::abs(u) > limit)) ++*clamped_hits;
      g = std::min(g, limit);
      u = std::max(-limit, std::min(u, limit));
      h(j) = (u + 1.0) * g * sigmoid(1.702 * g);
    } else {
      h(j) = u * g * sigmoid(g);
    }
  }
  Vec y(d);
  for (Eigen::Index i = 0; i < d; ++i) {
    double s = e.down_bias.size() ? e.down_bias(i) : 0.0;
    for (Eigen::Index j = 0; j < m; ++j) s += h(j) * e.down(j, i);
    y(i) = s;
  }
  return y;
}

/// The block on T tokens (x: T x d). routes (optional) receives each token's routing.
inline Mat forward(const Block& b, const Mat& x, std::vector<Routed>* routes = nullptr,
                   long* clamped = nullptr) {
  const Eigen::Index d = x.cols();
  const bool gpt = b.family == "gpt_oss";
  Mat y = Mat::Zero(x.rows(), d);
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const Vec xt = x.row(t).transpose();
    std::vector<double> z(static_cast<std::size_t>(b.router.cols()));
    for (Eigen::Index e = 0; e < b.router.cols(); ++e) {
      double s = b.router_bias.size() ? b.router_bias(e) : 0.0;
      for (Eigen::Index i = 0; i < d; ++i) s += xt(i) * b.router(i, e);
      z[static_cast<std::size_t>(e)] = s;
    }
    const Routed r = route(b, z);
    Vec yt = Vec::Zero(d);
    for (std::size_t s = 0; s < r.ids.size(); ++s) {
      const Expert& ex = b.experts[static_cast<std::size_t>(r.ids[s])];
      if (b.family == "llama4")
        yt += expert(ex, r.w[s] * xt, false, 0);
      else
        yt += r.w[s] * expert(ex, xt, gpt, b.limit, clamped);
    }
    Vec sh = Vec::Zero(d);
    for (const Expert& e : b.shared) sh += expert(e, xt, false, 0);
    if (b.shared_gate.size()) sh *= sigmoid(xt.dot(b.shared_gate));
    y.row(t) = (yt + sh).transpose();
    if (routes) routes->push_back(r);
  }
  return y;
}

}  // namespace ref::families
