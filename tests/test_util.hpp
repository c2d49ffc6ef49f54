// Helpers shared by the tests: seeded random matrices and error measures.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>

#include <moe/core/detail/rng.hpp>
#include <moe/core/types.hpp>
#include <moe/layer/ffn.hpp>

#include "reference/reference.hpp"

namespace testutil {

/// Gaussian matrix with standard deviation `sd`, from a fixed seed.
template <class M>
M random_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, double sd = 1.0) {
  moe::detail::SplitMix64 rng(seed);
  M m(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i)
    for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = static_cast<typename M::Scalar>(sd * rng.normal());
  return m;
}

/// A random SwiGLU FFN (gate, up: d x m; down: m x d), entries N(0, sd²), seeds seed..seed+2.
template <class T>
moe::FfnWeights<T> random_ffn(Eigen::Index d, Eigen::Index m, std::uint64_t seed, double sd) {
  return {random_matrix<moe::ColMatrix<T>>(d, m, seed, sd),
          random_matrix<moe::ColMatrix<T>>(d, m, seed + 1, sd),
          random_matrix<moe::ColMatrix<T>>(m, d, seed + 2, sd)};
}

/// The double-precision reference FFN, formula (1), on the same weights and input.
template <class T, class X>
ref::Mat ref_ffn(const moe::FfnWeights<T>& w, const X& x) {
  return ref::ffn(x.template cast<double>(), w.gate.template cast<double>(), w.up.template cast<double>(),
                  w.down.template cast<double>());
}

/// max |a - b| / max |b|: an error relative to the output's scale. Elementwise relative error
/// is meaningless for outputs near zero; a normalised max error is what GEMM rounding bounds.
template <class A, class B>
double rel_err(const A& a, const B& b) {
  const ref::Mat ad = a.template cast<double>(), bd = b.template cast<double>();
  const double scale = bd.cwiseAbs().maxCoeff();
  return (ad - bd).cwiseAbs().maxCoeff() / (scale > 0 ? scale : 1.0);
}

template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(typename A::Scalar) * static_cast<std::size_t>(a.size())) ==
             0;
}

/// Tolerance for comparing a T computation against the double reference (the project's accuracy bar):
/// 1e-5 for float, 1e-12 for double. Rounding over dot products of <= ~1000 terms grows like
/// sqrt(n)·eps; the largest errors these tests measured were 5.7e-7 (float) and 1.2e-15
/// (double), while a wrong index, orientation or weight gives errors of order 1.
template <class T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

}  // namespace testutil
