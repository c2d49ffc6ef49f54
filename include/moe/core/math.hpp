// moe — scalar math shared by the CPU path and (later) device code: sigmoid, SiLU (Swish),
// a stable softmax over N values and top-k over N values. Plain loops over raw pointers so the
// same code compiles for host and device.
#pragma once

#include <cmath>

#include "moe/core/config.hpp"

namespace moe {

/// sigmoid(z) = 1 / (1 + exp(-z)).
template <class T>
MOE_HOST_DEVICE inline T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

/// Swish / SiLU, paper formula (1): Swish(z) = z * sigmoid(z).
template <class T>
MOE_HOST_DEVICE inline T silu(T z) {
  return z / (T(1) + std::exp(-z));
}

/// Numerically stable softmax over n values: p_i = exp(z_i - max z) / sum_j exp(z_j - max z),
/// a division per value (the router's weights have always been computed this way). Accumulates
/// in T. `out` may alias `z`.
template <class T>
MOE_HOST_DEVICE inline void softmax(const T* z, int n, T* out) {
  T m = z[0];
  for (int i = 1; i < n; ++i) m = z[i] > m ? z[i] : m;
  T sum = T(0);
  for (int i = 0; i < n; ++i) {
    out[i] = std::exp(z[i] - m);
    sum += out[i];
  }
  for (int i = 0; i < n; ++i) out[i] /= sum;
}

/// Top-k of n values by descending value; ties go to the lower index (a later equal value never
/// displaces an earlier one). Writes k indices and their values, best first. O(n*k): n and k are
/// expert counts, small. Requires 1 <= k <= n and no NaN in `v` (callers check).
template <class T, class IndexT>
MOE_HOST_DEVICE inline void top_k(const T* v, int n, int k, IndexT* idx, T* val) {
  int count = 0;
  for (int e = 0; e < n; ++e) {
    const T x = v[e];
    if (count == k && !(x > val[k - 1])) continue;
    int pos = count < k ? count : k - 1;  // slot to fill; shift worse entries down
    while (pos > 0 && x > val[pos - 1]) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    val[pos] = x;
    idx[pos] = static_cast<IndexT>(e);
    if (count < k) ++count;
  }
}

}  // namespace moe
