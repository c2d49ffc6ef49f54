// Straightforward double-precision references for the tests: plain loops written from the
// paper's formulas, sharing no code with the library beyond the matrix types.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <Eigen/Core>

namespace ref {

using Mat = Eigen::MatrixXd;  // column-major double; orientation as in the paper

inline double silu(double z) { return z / (1.0 + std::exp(-z)); }

/// Formula (1): y = h W_down, h = (x W_up) ⊙ Swish(x W_gate). x: T x d, Wg/Wu: d x m, Wd: m x d.
inline Mat ffn_hidden(const Mat& x, const Mat& wg, const Mat& wu) {
  Mat h(x.rows(), wg.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t)
    for (Eigen::Index j = 0; j < wg.cols(); ++j) {
      double g = 0, u = 0;
      for (Eigen::Index i = 0; i < x.cols(); ++i) {
        g += x(t, i) * wg(i, j);
        u += x(t, i) * wu(i, j);
      }
      h(t, j) = u * silu(g);
    }
  return h;
}

inline Mat matmul(const Mat& a, const Mat& b) {
  Mat c = Mat::Zero(a.rows(), b.cols());
  for (Eigen::Index i = 0; i < a.rows(); ++i)
    for (Eigen::Index j = 0; j < b.cols(); ++j) {
      double s = 0;
      for (Eigen::Index l = 0; l < a.cols(); ++l) s += a(i, l) * b(l, j);
      c(i, j) = s;
    }
  return c;
}

inline Mat ffn(const Mat& x, const Mat& wg, const Mat& wu, const Mat& wd) {
  return matmul(ffn_hidden(x, wg, wu), wd);
}

/// Softmax of one row: p_i = exp(z_i) / sum_j exp(z_j), computed with the max subtracted.
inline std::vector<double> softmax(const std::vector<double>& z) {
  const double m = *std::max_element(z.begin(), z.end());
  std::vector<double> p(z.size());
  double s = 0;
  for (std::size_t i = 0; i < z.size(); ++i) s += (p[i] = std::exp(z[i] - m));
  for (auto& v : p) v /= s;
  return p;
}

/// Indices of the k largest values, best first; ties to the lower index (a stable sort).
inline std::vector<int> top_k(const std::vector<double>& v, int k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[a] > v[b]; });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

struct Expert {
  Mat wg, wu, wd;
};

/// The NumPy reference's forward: run every expert on every token, softmax over all N router
/// logits, pick the top-k, y = scale · Σ_K p_i E_i(x) (optionally p renormalised over K).
inline Mat moe_all_experts(const Mat& x, const std::vector<Expert>& experts, const Mat& logits, int k,
                           bool renormalize, double scale) {
  std::vector<Mat> out;
  for (const auto& e : experts) out.push_back(ffn(x, e.wg, e.wu, e.wd));
  Mat y = Mat::Zero(x.rows(), x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    std::vector<double> z(static_cast<std::size_t>(logits.cols()));
    for (Eigen::Index e = 0; e < logits.cols(); ++e) z[static_cast<std::size_t>(e)] = logits(t, e);
    const auto p = softmax(z);
    const auto sel = top_k(p, k);
    double norm = 0;
    for (int e : sel) norm += p[static_cast<std::size_t>(e)];
    for (int e : sel) {
      const double w = renormalize ? p[static_cast<std::size_t>(e)] / norm : p[static_cast<std::size_t>(e)];
      y.row(t) += w * out[static_cast<std::size_t>(e)].row(t);
    }
  }
  return scale * y;
}

}  // namespace ref
