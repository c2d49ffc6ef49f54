#include <catch2/catch.hpp>
#include <moe/layer/aggregate.hpp>

using namespace moe;

TEMPLATE_TEST_CASE("aggregate_top_k and apply_scale on a hand-computed case", "[aggregate]", float, double) {
  using T = TestType;
  // 2 tokens, N = 3 experts, d = 2. Expert e's output for token t is (10e + t, -(10e + t)).
  RowMatrix<T> all(2, 6);
  for (int t = 0; t < 2; ++t)
    for (int e = 0; e < 3; ++e) {
      all(t, 2 * e) = T(10 * e + t);
      all(t, 2 * e + 1) = -T(10 * e + t);
    }
  IdMatrix ids(2, 2);
  ids << 2, 0,  //
      1, 2;
  RowMatrix<T> w(2, 2);
  w << T(0.5), T(0.25),  //
      T(0.75), T(0.125);
  RowMatrix<T> y(2, 2);
  aggregate_top_k<T>(all, ids, w, y);
  // token 0: 0.5·20 + 0.25·0 = 10;  token 1: 0.75·11 + 0.125·21 = 10.875 (all exact in binary)
  CHECK(y(0, 0) == T(10));
  CHECK(y(0, 1) == T(-10));
  CHECK(y(1, 0) == T(10.875));
  apply_scale<T>(y, default_scale(3, 2));  // formula (6): N/k = 1.5
  CHECK(y(1, 0) == T(16.3125));
  CHECK(y(0, 1) == T(-15));
}

TEST_CASE("aggregate and scale reject bad input", "[aggregate]") {
  RowMatrix<float> all = RowMatrix<float>::Zero(2, 6), y(2, 2), w = RowMatrix<float>::Ones(2, 1);
  IdMatrix ids(2, 1);
  ids << 0, 3;
  CHECK_THROWS_WITH(aggregate_top_k<float>(all, ids, w, y), Catch::Contains("token 1 slot 0 names expert 3"));
  RowMatrix<float> y_bad(2, 4);
  CHECK_THROWS_AS(aggregate_top_k<float>(all, ids, w, y_bad), Error);  // 6 is not N·4
  CHECK_THROWS_WITH(default_scale(4, 5), Catch::Contains("1 <= k <= N"));
  CHECK_THROWS_WITH(default_scale(0, 1), Catch::Contains("N=0"));
  CHECK(default_scale(8, 2) == 4.0);
  CHECK_THROWS_AS(apply_scale<float>(y, std::nan("")), Error);
}
