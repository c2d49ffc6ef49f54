// moe — neuron importance, paper formula (5), and the FFN backward step that feeds it.
#pragma once

#include <cmath>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// FFN backward to the hidden activations: ∂L/∂h = ∂L/∂y · W_downᵀ (y = h·W_down, formula 1),
/// for callers that only have ∂L/∂y. grad_y: T x d row-major; w_down: m x d (HF down_proj.weight
/// [d, m] as stored); grad_h: T x m row-major (written).
template <class T>
void ffn_grad_hidden(const ConstRowRef<T>& grad_y, const Eigen::Ref<const ColMatrix<T>>& w_down,
                     RowRef<T> grad_h) {
  MOE_CHECK(grad_y.cols() == w_down.cols(),
            "ffn_grad_hidden: dL/dy has " << grad_y.cols() << " columns, W_down has d=" << w_down.cols());
  MOE_CHECK(grad_h.rows() == grad_y.rows() && grad_h.cols() == w_down.rows(),
            "ffn_grad_hidden: dL/dh is " << grad_h.rows() << "x" << grad_h.cols() << ", expected "
                                         << grad_y.rows() << "x" << w_down.rows());
  grad_h.noalias() = grad_y * w_down.transpose();
}

/// Neuron-importance accumulator, paper formula (5):  v += sum_{tokens} |h ⊙ ∂L/∂h|,
/// h being the input of W_down (d_h values per token). Sums in double whatever T is: importance
/// adds up many small terms over a calibration set.
class NeuronImportance {
 public:
  explicit NeuronImportance(Index hidden_dim) : values_(Eigen::VectorXd::Zero(hidden_dim)) {
    MOE_CHECK(hidden_dim > 0, "NeuronImportance: hidden_dim must be positive, got " << hidden_dim);
  }

  /// h, grad_h: T x d_h row-major. Throws on a shape mismatch or a non-finite product (a NaN in
  /// an importance vector would silently poison every later partition).
  template <class T>
  void add(const ConstRowRef<T>& h, const ConstRowRef<T>& grad_h) {
    MOE_CHECK(h.cols() == values_.size() && grad_h.cols() == values_.size() && h.rows() == grad_h.rows(),
              "NeuronImportance::add: h is " << h.rows() << "x" << h.cols() << ", dL/dh is " << grad_h.rows()
                                             << "x" << grad_h.cols() << ", expected Tx" << values_.size()
                                             << " for both");
    for (Index t = 0; t < h.rows(); ++t)
      for (Index i = 0; i < h.cols(); ++i) {
        const double v = std::abs(static_cast<double>(h(t, i)) * static_cast<double>(grad_h(t, i)));
        MOE_CHECK(std::isfinite(v),
                  "NeuronImportance::add: |h ⊙ dL/dh| is " << v << " at token " << t << ", neuron " << i);
        values_[i] += v;
      }
    tokens_ += h.rows();
  }

  const Eigen::VectorXd& values() const { return values_; }  ///< v, d_h values
  Index tokens() const { return tokens_; }                   ///< tokens accumulated so far
  void reset() {
    values_.setZero();
    tokens_ = 0;
  }

 private:
  Eigen::VectorXd values_;
  Index tokens_ = 0;
};

/// Formula (5) per data cluster: row c = Σ_{t : cluster[t] = c} |h_t ⊙ ∂L/∂h_t| (the importance
/// vectors v_j that SharingInner, SharingInter and the gradient split rank neurons by).
/// h, grad_h: T x d_h; cluster: T labels in [0, clusters). Sums in double.
template <class T>
Eigen::MatrixXd cluster_importance(const ConstRowRef<T>& h, const ConstRowRef<T>& grad_h,
                                   const std::vector<int>& cluster, int clusters) {
  MOE_CHECK(static_cast<Index>(cluster.size()) == h.rows(),
            "cluster_importance: " << cluster.size() << " cluster labels for " << h.rows() << " tokens");
  std::vector<NeuronImportance> acc(static_cast<std::size_t>(clusters), NeuronImportance(h.cols()));
  for (Index t = 0; t < h.rows(); ++t) {
    const int c = cluster[static_cast<std::size_t>(t)];
    MOE_CHECK(c >= 0 && c < clusters, "cluster_importance: token " << t << " has cluster " << c
                                                                   << ", expected [0, " << clusters << ")");
    acc[static_cast<std::size_t>(c)].add<T>(h.row(t), grad_h.row(t));
  }
  Eigen::MatrixXd v(clusters, h.cols());
  for (int c = 0; c < clusters; ++c) v.row(c) = acc[static_cast<std::size_t>(c)].values().transpose();
  return v;
}

/// Per-cluster importance when only a global vector v (formula 5 over a whole calibration set,
/// e.g. golden_ffn's importance_16x256_sumloss) and activations are at hand: v is shared among the
/// clusters in proportion to each one's activation mass on the neuron,
///   v_c(i) = v(i) · Σ_{t∈c} |h_ti| / Σ_t |h_ti|,
/// so Σ_c v_c = v exactly. It assumes |∂L/∂h_i| does not depend on the cluster — an estimate,
/// which cluster_importance replaces when per-token gradients exist. A neuron silent on every
/// token has its importance split evenly.
template <class T>
Eigen::MatrixXd split_importance_by_activation(const Eigen::Ref<const Eigen::VectorXd>& v,
                                               const ConstRowRef<T>& h, const std::vector<int>& cluster,
                                               int clusters) {
  MOE_CHECK(v.size() == h.cols(), "split_importance_by_activation: importance has "
                                      << v.size() << " values, h has d_h=" << h.cols());
  MOE_CHECK(v.allFinite(), "split_importance_by_activation: importance contains NaN or infinity");
  MOE_CHECK(static_cast<Index>(cluster.size()) == h.rows(),
            "split_importance_by_activation: " << cluster.size() << " cluster labels for " << h.rows()
                                               << " tokens");
  Eigen::MatrixXd mass = Eigen::MatrixXd::Zero(clusters, h.cols());
  for (Index t = 0; t < h.rows(); ++t) {
    const int c = cluster[static_cast<std::size_t>(t)];
    MOE_CHECK(c >= 0 && c < clusters, "split_importance_by_activation: token "
                                          << t << " has cluster " << c << ", expected [0, " << clusters
                                          << ")");
    mass.row(c) += h.row(t).template cast<double>().cwiseAbs();
  }
  for (Index i = 0; i < h.cols(); ++i) {
    const double total = mass.col(i).sum();
    if (total > 0)
      mass.col(i) *= v[i] / total;
    else
      mass.col(i).setConstant(v[i] / clusters);
  }
  return mass;
}

}  // namespace moe
