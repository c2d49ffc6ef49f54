#include <catch2/catch.hpp>
#include <moe/construction/slicing.hpp>

#include "test_util.hpp"

using namespace moe;

TEMPLATE_TEST_CASE("slice_expert takes columns/rows S_j, formula (3)", "[slicing]", float, double) {
  using T = TestType;
  const Index d = 5, dh = 9;
  const FfnWeights<T> w = testutil::random_ffn<T>(d, dh, 1, 1.0);
  const FfnWeightsView<T> dense = w.view();
  const std::vector<std::int32_t> s = {7, 0, 3};
  const FfnWeights<T> e = slice_expert(dense, s);
  REQUIRE(e.gate.cols() == 3);
  REQUIRE(e.down.rows() == 3);
  for (std::size_t i = 0; i < s.size(); ++i)
    for (Index r = 0; r < d; ++r) {
      CHECK(e.gate(r, static_cast<Index>(i)) == w.gate(r, s[i]));  // W_gate[:, S_j]
      CHECK(e.up(r, static_cast<Index>(i)) == w.up(r, s[i]));      // W_up[:, S_j]
      CHECK(e.down(static_cast<Index>(i), r) == w.down(s[i], r));  // W_down[S_j, :]
    }
  CHECK_THROWS_WITH(slice_expert(dense, {1, 9}), Catch::Contains("neuron 9 outside [0, 9)"));
  CHECK_THROWS_AS(slice_expert(dense, {}), Error);
  CHECK_THROWS_WITH(slice_experts(dense, ExpertPartition(8, {{0}})), Catch::Contains("d_h=8"));
}

TEMPLATE_TEST_CASE("disjoint experts with weight 1 sum back to the dense FFN", "[slicing]", float, double) {
  // The identity behind formula (3): h is elementwise in the neurons, so y = h W_down splits
  // into per-neuron-set partial sums: sum_j E_j(x) = FFN(x) for a disjoint covering partition.
  using T = TestType;
  const Index d = 40, dh = 103, tokens = 6;  // 103 = prime: uneven sets for every N
  const FfnWeights<T> w = testutil::random_ffn<T>(d, dh, 5, 0.3);
  const FfnWeightsView<T> dense = w.view();
  const auto x = testutil::random_matrix<RowMatrix<T>>(tokens, d, 8);
  FfnWorkspace<T> ws;
  RowMatrix<T> y_dense(tokens, d), y_sum = RowMatrix<T>::Zero(tokens, d), y_e(tokens, d);
  ffn_forward<T>(dense, x, y_dense, ws);
  for (int n : {1, 2, 4, 7}) {
    const auto experts = slice_experts(dense, ExpertPartition::independent_random(dh, n, 99));
    y_sum.setZero();
    for (const auto& e : experts) {
      ffn_forward<T>(e.view(), x, y_e, ws);
      y_sum += y_e;
    }
    CHECK(testutil::rel_err(y_sum, y_dense) < testutil::tol<T>());
  }
}
