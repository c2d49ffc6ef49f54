// moe — the top-k router: logits x·W_r, softmax over all N experts, top-k (paper formula (2)'s
// G(x) and K(x)).
#pragma once

#include <cmath>
#include <cstdint>

#include "moe/config.hpp"
#include "moe/math.hpp"
#include "moe/types.hpp"

namespace moe {

/// How the k selected weights are formed from the softmax over all N experts.
enum class TopKWeights {
  kSoftmax,       ///< LLaMA-MoE reference: p_i of the softmax over all N, not renormalised
  kRenormalized,  ///< Mixtral: p_i / sum_{j in K} p_j, the k weights sum to 1
};

/// The routing of T tokens: for token t, slot s, expert ids(t, s) with weight weights(t, s).
/// Slots are ordered best first.
template <class T>
struct TopKRouting {
  IdMatrix ids;          ///< T x k, expert index in [0, N)
  RowMatrix<T> weights;  ///< T x k, G(x)_i of formula (2)
  Index tokens() const { return ids.rows(); }
  int k() const { return static_cast<int>(ids.cols()); }
};

/// Router logits z = x·W_r. x: T x d row-major; w_router: d x N (column-major, i.e. HF
/// gate.weight [N, d] as stored); logits: T x N row-major (written).
template <class T>
void router_logits(const ConstRowRef<T>& x, const Eigen::Ref<const ColMatrix<T>>& w_router,
                   RowRef<T> logits) {
  MOE_CHECK(x.cols() == w_router.rows(),
            "router_logits: x has " << x.cols() << " columns, router weight expects d=" << w_router.rows());
  MOE_CHECK(logits.rows() == x.rows() && logits.cols() == w_router.cols(),
            "router_logits: logits is " << logits.rows() << "x" << logits.cols() << ", expected " << x.rows()
                                        << "x" << w_router.cols());
  logits.noalias() = x * w_router;
}

/// Top-k gate, paper formula (2): p = softmax(z) over all N; K = top-k(p); G_i = p_i (kSoftmax)
/// or p_i / sum_{j in K} p_j (kRenormalized).
/// logits: T x N row-major; ids: T x k; weights: T x k (both written, slots best first).
/// Selection compares the logits, which orders experts exactly as p does (softmax is monotone)
/// without rounding ties; equal logits go to the lower expert index. No epsilon in the softmax
/// denominator. Accumulates in T. Throws moe::Error for k < 1, k > N, shape mismatches, or a NaN/Inf
/// logit (naming the token and expert).
template <class T>
void route_top_k(const ConstRowRef<T>& logits, int k, TopKWeights mode, Eigen::Ref<IdMatrix> ids,
                 RowRef<T> weights) {
  const Index tokens = logits.rows(), n = logits.cols();
  MOE_CHECK(n >= 1, "route_top_k: no experts (logits have 0 columns)");
  MOE_CHECK(k >= 1 && k <= n, "route_top_k: k=" << k << " must be in [1, N=" << n << "]");
  MOE_CHECK(ids.rows() == tokens && ids.cols() == k && weights.rows() == tokens && weights.cols() == k,
            "route_top_k: outputs are ids " << ids.rows() << "x" << ids.cols() << " and weights "
                                            << weights.rows() << "x" << weights.cols() << ", expected "
                                            << tokens << "x" << k);
  const int nn = static_cast<int>(n);
  for (Index t = 0; t < tokens; ++t) {
    const T* z = logits.row(t).data();
    T zmax = z[0];
    for (int e = 0; e < nn; ++e) {
      MOE_CHECK(std::isfinite(z[e]),
                "route_top_k: router logit for token " << t << ", expert " << e << " is " << z[e]);
      zmax = z[e] > zmax ? z[e] : zmax;
    }
    T sum = T(0);
    for (int e = 0; e < nn; ++e) sum += std::exp(z[e] - zmax);
    std::int32_t* id = ids.row(t).data();
    T* w = weights.row(t).data();
    top_k(z, nn, k, id, w);  // w holds the selected logits for now
    T selected = T(0);
    for (int s = 0; s < k; ++s) {
      w[s] = std::exp(w[s] - zmax) / sum;
      selected += w[s];
    }
    if (mode == TopKWeights::kRenormalized)
      for (int s = 0; s < k; ++s) w[s] /= selected;
  }
}

/// Convenience overload returning a new TopKRouting (allocates).
template <class T>
TopKRouting<T> route_top_k(const ConstRowRef<T>& logits, int k, TopKWeights mode) {
  MOE_CHECK(k >= 1 && k <= logits.cols(),
            "route_top_k: k=" << k << " must be in [1, N=" << logits.cols() << "]");
  TopKRouting<T> r{IdMatrix(logits.rows(), k), RowMatrix<T>(logits.rows(), k)};
  route_top_k<T>(logits, k, mode, r.ids, r.weights);
  return r;
}

}  // namespace moe
