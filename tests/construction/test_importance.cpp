#include <catch2/catch.hpp>
#include <limits>
#include <moe/construction/importance.hpp>

#include "test_util.hpp"

using namespace moe;

TEMPLATE_TEST_CASE("NeuronImportance accumulates sum |h ⊙ dL/dh|, formula (5)", "[importance]", float,
                   double) {
  using T = TestType;
  const auto h1 = testutil::random_matrix<RowMatrix<T>>(7, 12, 1);
  const auto g1 = testutil::random_matrix<RowMatrix<T>>(7, 12, 2);
  const auto h2 = testutil::random_matrix<RowMatrix<T>>(3, 12, 3);
  const auto g2 = testutil::random_matrix<RowMatrix<T>>(3, 12, 4);
  NeuronImportance acc(12);
  acc.add<T>(h1, g1);
  acc.add<T>(h2, g2);
  CHECK(acc.tokens() == 10);
  for (Index i = 0; i < 12; ++i) {
    double v = 0;
    for (Index t = 0; t < 7; ++t) v += std::abs(double(h1(t, i)) * double(g1(t, i)));
    for (Index t = 0; t < 3; ++t) v += std::abs(double(h2(t, i)) * double(g2(t, i)));
    CHECK(acc.values()[i] == Approx(v).epsilon(1e-14));
  }
  acc.reset();
  CHECK(acc.values().isZero());
  CHECK(acc.tokens() == 0);
}

TEST_CASE("NeuronImportance rejects bad shapes and non-finite values", "[importance]") {
  NeuronImportance acc(4);
  RowMatrix<float> h = RowMatrix<float>::Ones(2, 4), g3(2, 3), g = RowMatrix<float>::Ones(2, 4);
  CHECK_THROWS_WITH(acc.add<float>(h, g3), Catch::Contains("dL/dh is 2x3"));
  g(1, 2) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(acc.add<float>(h, g), Catch::Contains("token 1, neuron 2"));
  CHECK_THROWS_AS(NeuronImportance(0), Error);
}

TEMPLATE_TEST_CASE("ffn_grad_hidden is dL/dy · W_downᵀ", "[importance]", float, double) {
  using T = TestType;
  const auto gy = testutil::random_matrix<RowMatrix<T>>(5, 8, 1);
  const auto wd = testutil::random_matrix<ColMatrix<T>>(11, 8, 2);
  RowMatrix<T> gh(5, 11);
  ffn_grad_hidden<T>(gy, wd, gh);
  CHECK(testutil::rel_err(gh, ref::matmul(gy.template cast<double>(),
                                          wd.template cast<double>().transpose())) < testutil::tol<T>());
  // Finite-difference check of the chain rule: L = <dL/dy, h W_down> is linear in h, so
  // L(h + eps e_ij) - L(h) = eps (dL/dh)_ij exactly in real arithmetic.
  const ref::Mat h = testutil::random_matrix<ref::Mat>(5, 11, 3);
  auto loss = [&](const ref::Mat& hh) {
    return (gy.template cast<double>().array() * ref::matmul(hh, wd.template cast<double>()).array()).sum();
  };
  ref::Mat hp = h;
  hp(2, 7) += 1e-3;
  CHECK((loss(hp) - loss(h)) / 1e-3 == Approx(double(gh(2, 7))).epsilon(1e-5));
  RowMatrix<T> bad(5, 10);
  CHECK_THROWS_WITH(ffn_grad_hidden<T>(gy, wd, bad), Catch::Contains("dL/dh is 5x10"));
}
