#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <moe/layer/router.hpp>

#include "test_util.hpp"

using namespace moe;

TEMPLATE_TEST_CASE("route_top_k on a hand-computed case", "[router]", float, double) {
  using T = TestType;
  // softmax(0, ln 2, ln 3) = (1/6, 2/6, 3/6): top-2 = experts 2, 1 with weights 1/2, 1/3;
  // renormalised: 3/5, 2/5.
  RowMatrix<T> z(1, 3);
  z << T(0), T(std::log(2.0)), T(std::log(3.0));
  const auto r = route_top_k<T>(z, 2, TopKWeights::kSoftmax);
  CHECK(r.ids(0, 0) == 2);
  CHECK(r.ids(0, 1) == 1);
  CHECK(r.weights(0, 0) == Approx(0.5).epsilon(1e-6));
  CHECK(r.weights(0, 1) == Approx(1.0 / 3.0).epsilon(1e-6));
  const auto rn = route_top_k<T>(z, 2, TopKWeights::kRenormalized);
  CHECK(rn.weights(0, 0) == Approx(0.6).epsilon(1e-6));
  CHECK(rn.weights(0, 1) == Approx(0.4).epsilon(1e-6));
}

TEST_CASE("route_top_k breaks ties by the lower expert index", "[router]") {
  RowMatrix<float> z(2, 4);
  z << 1, 3, 3, 2,  //
      5, 5, 5, 5;
  const auto r = route_top_k<float>(z, 2, TopKWeights::kSoftmax);
  CHECK(r.ids(0, 0) == 1);
  CHECK(r.ids(0, 1) == 2);
  CHECK(r.ids(1, 0) == 0);
  CHECK(r.ids(1, 1) == 1);
  CHECK(r.weights(1, 0) == 0.25f);  // exp(0)/4, exact
}

TEMPLATE_TEST_CASE("route_top_k matches the double reference on random logits", "[router]", float, double) {
  using T = TestType;
  const auto z = testutil::random_matrix<RowMatrix<T>>(50, 16, 21, 2.0);
  for (int k : {1, 2, 4, 16}) {
    for (auto mode : {TopKWeights::kSoftmax, TopKWeights::kRenormalized}) {
      const auto r = route_top_k<T>(z, k, mode);
      for (Index t = 0; t < z.rows(); ++t) {
        std::vector<double> zt(16);
        for (int e = 0; e < 16; ++e) zt[static_cast<std::size_t>(e)] = static_cast<double>(z(t, e));
        const auto p = ref::softmax(zt);
        const auto sel = ref::top_k(p, k);
        double sum = 0;
        for (int e : sel) sum += p[static_cast<std::size_t>(e)];
        for (int s = 0; s < k; ++s) {
          CHECK(r.ids(t, s) == sel[static_cast<std::size_t>(s)]);
          const double w = p[static_cast<std::size_t>(sel[static_cast<std::size_t>(s)])] /
                           (mode == TopKWeights::kRenormalized ? sum : 1.0);
          CHECK(std::abs(r.weights(t, s) - w) < 4 * testutil::tol<T>());
        }
        if (k == 16) CHECK(r.weights.row(t).sum() == Approx(1.0).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("route_top_k rejects bad k, NaN and Inf with a clear message", "[router]") {
  RowMatrix<float> z = RowMatrix<float>::Zero(3, 4);
  CHECK_THROWS_WITH(route_top_k<float>(z, 0, TopKWeights::kSoftmax),
                    Catch::Contains("k=0 must be in [1, N=4]"));
  CHECK_THROWS_WITH(route_top_k<float>(z, 5, TopKWeights::kSoftmax),
                    Catch::Contains("k=5 must be in [1, N=4]"));
  RowMatrix<float> empty(3, 0);
  CHECK_THROWS_AS(route_top_k<float>(empty, 1, TopKWeights::kSoftmax), Error);
  z(1, 2) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(route_top_k<float>(z, 2, TopKWeights::kSoftmax),
                    Catch::Contains("token 1, expert 2 is nan"));
  z(1, 2) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(route_top_k<float>(z, 2, TopKWeights::kSoftmax), Catch::Contains("is inf"));
  z(1, 2) = 0;
  IdMatrix ids(3, 1);
  RowMatrix<float> w(3, 2);
  CHECK_THROWS_WITH(route_top_k<float>(z, 2, TopKWeights::kSoftmax, ids, w), Catch::Contains("ids 3x1"));
}

TEST_CASE("router_logits is x times W_r", "[router]") {
  const auto x = testutil::random_matrix<RowMatrix<double>>(4, 6, 1);
  const auto w = testutil::random_matrix<ColMatrix<double>>(6, 3, 2);
  RowMatrix<double> z(4, 3);
  router_logits<double>(x, w, z);
  CHECK(testutil::rel_err(z, ref::matmul(x, w)) < 1e-12);
  RowMatrix<double> bad(4, 2);
  CHECK_THROWS_WITH(router_logits<double>(x, w, bad), Catch::Contains("logits is 4x2"));
  RowMatrix<double> xbad(4, 5);
  CHECK_THROWS_WITH(router_logits<double>(xbad, w, z), Catch::Contains("x has 5 columns"));
}
