#include <catch2/catch.hpp>
#include <limits>
#include <memory>
#include <moe/construction/slicing.hpp>
#include <moe/layer/moe_layer.hpp>

#include "test_util.hpp"

using namespace moe;

namespace {

template <class T>
struct Fixture {
  FfnWeights<T> ffn;
  ColMatrix<T> router;
  ExpertPartition partition;
  Fixture(Index d, Index dh, int n, std::uint64_t seed)
      : ffn(testutil::random_ffn<T>(d, dh, seed + 1, 0.2)),
        router(testutil::random_matrix<ColMatrix<T>>(d, n, seed + 4, 0.5)),
        partition(ExpertPartition::independent_random(dh, n, seed)) {}
  FfnWeightsView<T> dense() const { return ffn.view(); }
  MoELayer<T> layer(MoEConfig cfg) const {
    return MoELayer<T>(slice_experts(dense(), partition), router, cfg);
  }
  std::vector<ref::Expert> ref_experts() const {
    std::vector<ref::Expert> out;
    for (int j = 0; j < partition.num_experts(); ++j) {
      const auto e = slice_expert(dense(), partition.expert(j));
      out.push_back(
          {e.gate.template cast<double>(), e.up.template cast<double>(), e.down.template cast<double>()});
    }
    return out;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("MoELayer equals 'run every expert, pick the top-k' (NumPy reference)", "[moe_layer]",
                   float, double) {
  using T = TestType;
  struct Case {
    Index d, dh;
    int n, k;
    Index tokens;
    bool renorm;
  };
  // T = 1 (most experts idle), k = N, uneven partitions (dh % N != 0), both weight modes, d/m
  // spanning several 256-column blocks, ~45 rows per expert with d = 300 (the float GEMM
  // kernel's token panels, row padding and a partial depth block), and 400 rows on each of 2
  // experts (3 row blocks of the scratch, detail::num_row_blocks).
  const Case cases[] = {{16, 64, 4, 2, 1, false},   {16, 64, 4, 4, 7, false},   {24, 50, 3, 2, 16, true},
                        {32, 96, 8, 1, 5, false},   {20, 103, 8, 2, 33, false}, {300, 530, 4, 2, 9, true},
                        {12, 40, 16, 4, 64, false}, {8, 9, 2, 2, 3, true},      {300, 530, 4, 2, 90, false},
                        {24, 70, 2, 2, 400, false}};
  for (const Case& c : cases) {
    Fixture<T> f(c.d, c.dh, c.n, 100 + static_cast<std::uint64_t>(c.n * 7 + c.k));
    MoEConfig cfg{c.k, c.renorm ? TopKWeights::kRenormalized : TopKWeights::kSoftmax, std::nullopt};
    const MoELayer<T> layer = f.layer(cfg);
    const auto x = testutil::random_matrix<RowMatrix<T>>(c.tokens, c.d, 7);
    RowMatrix<T> y(c.tokens, c.d);
    MoEWorkspace<T> ws;
    RoutingRecord<T> rec;
    layer.forward(x, y, ws, nullptr, &rec);
    const ref::Mat logits = ref::matmul(x.template cast<double>(), f.router.template cast<double>());
    const ref::Mat expect = ref::moe_all_experts(x.template cast<double>(), f.ref_experts(), logits, c.k,
                                                 c.renorm, double(c.n) / c.k);
    INFO("d=" << c.d << " dh=" << c.dh << " N=" << c.n << " k=" << c.k << " T=" << c.tokens);
    CHECK(testutil::rel_err(y, expect) < testutil::tol<T>());
    // The layer computed exactly T·k (token, expert) rows: never an expert a token was not routed to.
    CHECK(ws.dispatch().offsets.back() == c.tokens * c.k);
    Index total = 0;
    for (int e = 0; e < c.n; ++e) {
      Index routed = 0;
      for (Index t = 0; t < c.tokens; ++t)
        for (int s = 0; s < c.k; ++s) routed += rec.expert_ids(t, s) == e;
      CHECK(rec.tokens_per_expert[static_cast<std::size_t>(e)] == routed);
      total += routed;
    }
    CHECK(total == c.tokens * c.k);
    CHECK(layer.scale() == double(c.n) / c.k);
  }
}

TEST_CASE("MoELayer: experts with no tokens are skipped and cost nothing", "[moe_layer]") {
  Fixture<double> f(10, 40, 5, 3);
  const MoELayer<double> layer = f.layer({2, TopKWeights::kSoftmax, 1.0});
  const auto x = testutil::random_matrix<RowMatrix<double>>(6, 10, 1);
  // Route every token to experts 3 and 1 only.
  IdMatrix ids(6, 2);
  RowMatrix<double> w(6, 2);
  for (Index t = 0; t < 6; ++t) {
    ids(t, 0) = 3;
    ids(t, 1) = 1;
    w(t, 0) = 0.7;
    w(t, 1) = 0.2;
  }
  RowMatrix<double> y(6, 10);
  MoEWorkspace<double> ws;
  RoutingRecord<double> rec;
  layer.forward_routed(x, ids, w, y, ws, nullptr, &rec);
  CHECK(rec.tokens_per_expert == std::vector<Index>{0, 6, 0, 6, 0});
  const auto e = f.ref_experts();
  const ref::Mat xd = x;
  const ref::Mat expect =
      0.7 * ref::ffn(xd, e[3].wg, e[3].wu, e[3].wd) + 0.2 * ref::ffn(xd, e[1].wg, e[1].wu, e[1].wd);
  CHECK(testutil::rel_err(y, expect) < 1e-12);  // scale 1.0 as configured
}

TEST_CASE("MoELayer output is bitwise identical for any thread count", "[moe_layer]") {
  Fixture<float> f(300, 1100, 8, 9);  // several column blocks per expert and for d
  const MoELayer<float> layer = f.layer({2, TopKWeights::kSoftmax, std::nullopt});
  for (Index tokens : {1, 37, 200}) {
    const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, 300, 5);
    MoEWorkspace<float> ws;
    RowMatrix<float> y0(tokens, 300);
    layer.forward(x, y0, ws);
    for (int threads : {1, 2, 3, 4}) {
      ThreadPool pool(threads);
      MoEWorkspace<float> ws2;
      RowMatrix<float> y(tokens, 300);
      layer.forward(x, y, ws2, &pool);
      CHECK(testutil::bitwise_equal(y, y0));
      layer.forward(x, y, ws, &pool);  // a reused workspace too
      CHECK(testutil::bitwise_equal(y, y0));
    }
  }
}

TEMPLATE_TEST_CASE("MoELayer: a token's expert outputs do not depend on the call's other tokens",
                   "[moe_layer]", float, Eigen::bfloat16, Eigen::half) {
  // The expert computation, past 2·kRowBlock rows, runs in row blocks of the scratch; a row's bits
  // must not depend on its block. With N = k = 2 both experts get every token: 700 rows (5 row
  // blocks), and 150 of those tokens in a call of their own 150 rows (one block). The routing is
  // given (forward_routed): the router's logits come from Eigen's GEMM, whose blocking, and so
  // its sums, depend on the token count.
  using W = TestType;
  Fixture<float> f(300, 520, 2, 17);
  std::vector<FfnWeights<W>> experts;
  for (const auto& e : slice_experts(f.dense(), f.partition)) experts.push_back(convert_weights<W>(e.view()));
  const MoELayer<float, W> layer(experts, f.router, {2});
  const Index tokens = 700, first = 200, part = 150;
  const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, 300, 18);
  IdMatrix ids(tokens, 2);
  RowMatrix<float> w(tokens, 2);
  for (Index t = 0; t < tokens; ++t) {
    ids(t, 0) = static_cast<int>(t % 2);
    ids(t, 1) = static_cast<int>(1 - t % 2);
    w(t, 0) = 0.6f + 0.0005f * static_cast<float>(t);
    w(t, 1) = 0.2f;
  }
  RowMatrix<float> all(tokens, 300), some(part, 300);
  MoEWorkspace<float> ws;
  ThreadPool pool(2);
  layer.forward_routed(x, ids, w, all, ws, &pool);
  REQUIRE(detail::num_row_blocks(ws.dispatch().counts[0]) == 5);
  layer.forward_routed(x.middleRows(first, part), ids.middleRows(first, part), w.middleRows(first, part),
                       some, ws);
  REQUIRE(detail::num_row_blocks(ws.dispatch().counts[0]) == 1);
  REQUIRE(ws.dispatch().counts[0] > detail::kFewRows);  // the same many-rows kernel
  CHECK(testutil::bitwise_equal(RowMatrix<float>(all.middleRows(first, part)), some));
}

TEST_CASE("MoELayer::forward on a CpuBackend is the workspace forward, bit for bit", "[moe_layer]") {
  Fixture<float> f(300, 1100, 8, 9);
  const MoELayer<float> layer = f.layer({2, TopKWeights::kSoftmax, std::nullopt});
  ThreadPool pool(2);
  CpuBackend<float> serial, threaded(&pool);
  for (Index tokens : {1, 37}) {
    const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, 300, 6);
    MoEWorkspace<float> ws;
    RowMatrix<float> expect(tokens, 300);
    layer.forward(x, expect, ws);
    RowMatrix<float> y = RowMatrix<float>::Zero(tokens, 300);
    layer.forward(x, y, serial);
    CHECK(testutil::bitwise_equal(y, expect));
    y.setZero();  // the threaded call must write every value again
    layer.forward(x, y, threaded);
    CHECK(testutil::bitwise_equal(y, expect));
  }
  CHECK(serial.workspace().dispatch().offsets.back() == 37 * 2);  // the backend's own workspace ran
}

TEST_CASE("MoELayer with view experts and a custom scale", "[moe_layer]") {
  Fixture<double> f(12, 36, 3, 4);
  const auto owned = slice_experts(f.dense(), f.partition);
  std::vector<FfnWeightsView<double>> views;
  for (const auto& e : owned) views.push_back(e.view());
  const MoELayer<double> by_view(views, f.router, {2, TopKWeights::kSoftmax, 0.5});
  const MoELayer<double> by_value = f.layer({2, TopKWeights::kSoftmax, std::nullopt});
  CHECK(by_view.expert(1).gate.data() == owned[1].gate.data());  // no copy
  const auto x = testutil::random_matrix<RowMatrix<double>>(5, 12, 2);
  RowMatrix<double> a(5, 12), b(5, 12);
  MoEWorkspace<double> ws;
  by_view.forward(x, a, ws);
  by_value.forward(x, b, ws);
  CHECK(testutil::rel_err(a, b * (0.5 / 1.5)) < 1e-12);  // scale 0.5 instead of N/k = 1.5
}

TEST_CASE("MoELayer rejects bad configurations and inputs", "[moe_layer]") {
  Fixture<float> f(8, 16, 4, 1);
  auto experts = [&] { return slice_experts(f.dense(), f.partition); };
  CHECK_THROWS_WITH(MoELayer<float>(experts(), f.router, {0}), Catch::Contains("k=0 must be in [1, N=4]"));
  CHECK_THROWS_WITH(MoELayer<float>(experts(), f.router, {5}), Catch::Contains("k=5 must be in [1, N=4]"));
  CHECK_THROWS_WITH(MoELayer<float>(std::vector<FfnWeights<float>>{}, f.router, {1}),
                    Catch::Contains("N = 0"));
  CHECK_THROWS_WITH(MoELayer<float>(experts(), ColMatrix<float>(8, 3), {2}),
                    Catch::Contains("router weight is 8x3"));
  CHECK_THROWS_WITH(MoELayer<float>(experts(), f.router, {2, TopKWeights::kSoftmax, std::nan("")}),
                    Catch::Contains("not finite"));
  auto mixed = experts();
  mixed[2] = slice_expert(FfnWeightsView<float>(f.ffn.gate.data(), f.ffn.up.data(), f.ffn.down.data(), 4, 16),
                          {0, 1});
  CHECK_THROWS_WITH(MoELayer<float>(std::move(mixed), f.router, {2}), Catch::Contains("expert 2 has d=4"));

  const MoELayer<float> layer = f.layer({2});
  MoEWorkspace<float> ws;
  RowMatrix<float> x = RowMatrix<float>::Ones(3, 8), y(3, 8), x_bad(3, 7), y_bad(2, 8);
  CHECK_THROWS_WITH(layer.forward(x_bad, y, ws), Catch::Contains("x has 7 columns"));
  CHECK_THROWS_WITH(layer.forward(x, y_bad, ws), Catch::Contains("y is 2x8"));
  x(2, 3) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(layer.forward(x, y, ws), Catch::Contains("token 2"));
  x(2, 3) = 1;
  IdMatrix ids = IdMatrix::Zero(3, 2);
  RowMatrix<float> w = RowMatrix<float>::Ones(3, 2);
  ids(1, 1) = 4;
  CHECK_THROWS_WITH(layer.forward_routed(x, ids, w, y, ws), Catch::Contains("token 1 slot 1 names expert 4"));
  ids(1, 1) = 0;
  w(0, 1) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(layer.forward_routed(x, ids, w, y, ws),
                    Catch::Contains("weight of token 0 slot 1 is inf"));
  const MoELayer<float> no_router(experts(), ColMatrix<float>(), {2});
  CHECK_THROWS_WITH(no_router.forward(x, y, ws), Catch::Contains("no router weight"));
}

TEST_CASE("MoELayer handles zero tokens and a routing with another k", "[moe_layer]") {
  Fixture<double> f(10, 40, 4, 8);
  const MoELayer<double> layer = f.layer({2, TopKWeights::kSoftmax, 1.0});
  MoEWorkspace<double> ws;
  RowMatrix<double> x0(0, 10), y0(0, 10);
  layer.forward(x0, y0, ws);
  CHECK(ws.dispatch().offsets.back() == 0);
  // forward_routed accepts any k' <= N: here all four experts with weight 1 and scale 1, which
  // for a disjoint covering partition is the dense FFN (formula 3's identity).
  const auto x = testutil::random_matrix<RowMatrix<double>>(3, 10, 2);
  IdMatrix ids(3, 4);
  ids << 0, 1, 2, 3, 3, 2, 1, 0, 2, 0, 3, 1;
  const RowMatrix<double> w = RowMatrix<double>::Ones(3, 4);
  RowMatrix<double> y(3, 10);
  layer.forward_routed(x, ids, w, y, ws);
  CHECK(testutil::rel_err(y, testutil::ref_ffn(f.ffn, x)) < 1e-12);
}

TEST_CASE("A copied MoELayer owns its experts; a moved one keeps working", "[moe_layer]") {
  Fixture<double> f(10, 40, 4, 11);
  const auto x = testutil::random_matrix<RowMatrix<double>>(5, 10, 3);
  RowMatrix<double> expect(5, 10), y(5, 10);
  MoEWorkspace<double> ws;
  auto original = std::make_unique<MoELayer<double>>(f.layer({2}));
  original->forward(x, expect, ws);
  MoELayer<double> copy(*original);
  MoELayer<double> assigned = f.layer({1});
  assigned = *original;
  CHECK(copy.expert(0).gate.data() != original->expert(0).gate.data());  // its own weights
  original.reset();  // a copy that viewed the original's weights would now read freed memory
  copy.forward(x, y, ws);
  CHECK(testutil::bitwise_equal(y, expect));
  assigned.forward(x, y, ws);
  CHECK(testutil::bitwise_equal(y, expect));
  MoELayer<double> moved(std::move(copy));
  moved.forward(x, y, ws);
  CHECK(testutil::bitwise_equal(y, expect));
}

TEMPLATE_TEST_CASE(
    "bf16 / half experts: bitwise the float layer on the rounded weights, near the float layer",
    "[moe_layer][low_precision]", Eigen::bfloat16, Eigen::half) {
  using W = TestType;
  Fixture<float> f(300, 1100, 8, 21);  // several column and depth blocks per expert
  const MoEConfig cfg{2, TopKWeights::kSoftmax, std::nullopt};
  const auto experts = slice_experts(f.dense(), f.partition);
  std::vector<FfnWeights<W>> low;
  std::vector<FfnWeights<float>> rounded;  // the same rounded weights, stored as float
  for (const auto& e : experts) {
    low.push_back(convert_weights<W>(e.view()));
    rounded.push_back(convert_weights<float>(low.back().view()));
  }
  const MoELayer<float, W> layer_low(low, f.router, cfg);
  const MoELayer<float> layer_rounded(rounded, f.router, cfg), layer_f32(experts, f.router, cfg);
  // Unit roundoff of the storage format: 2^-9 (bf16, 8 significand bits), 2^-11 (half, 11).
  const double u = std::is_same_v<W, Eigen::bfloat16> ? std::ldexp(1.0, -9) : std::ldexp(1.0, -11);
  constexpr bool kRoundsActivations = std::is_same_v<W, Eigen::bfloat16> && detail::kBf16DotProducts;
  ThreadPool pool(2);
  for (Index tokens : {1, 3, 7, 64, 200}) {  // the few-rows and the many-rows kernels
    const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, 300, 9);
    RowMatrix<float> y_low(tokens, 300), y_rounded(tokens, 300), y_f32(tokens, 300);
    MoEWorkspace<float> ws;
    layer_low.forward(x, y_low, ws, &pool);
    layer_rounded.forward(x, y_rounded, ws, &pool);
    layer_f32.forward(x, y_f32, ws);
    INFO("tokens=" << tokens);
    INFO("measured: vs rounded weights " << testutil::rel_err(y_low, y_rounded) / u << " u, vs float "
                                         << testutil::rel_err(y_low, y_f32) / u << " u");
    if (kRoundsActivations && tokens > detail::kFewRows) {
      // The many-rows kernel multiplies bf16-rounded activations (detail::kBf16DotProducts): x and
      // h move by at most u relatively, the outputs by ~u (max error over all outputs / max |y|,
      // measured up to 2.3 u, at 200 tokens). The kernel's own test bounds it tightly.
      CHECK(testutil::rel_err(y_low, y_rounded) < 4 * u);
    } else {
      // Widening is exact and the kernels run the same float operations in the same order (with
      // at most kFewRows tokens every expert runs the few-rows kernel, which keeps float activations).
      CHECK(testutil::bitwise_equal(y_low, y_rounded));
    }
    // Against the float weights: each of the three projections sees weights perturbed by at most
    // u relatively; with random signs the output moves by ~u·sqrt(3) relatively (measured
    // 0.5-1.6 u here; 3.4 u with bf16 activations as well, hence 6u there). Both fail on a wrong
    // widening (e.g. bf16 bits read as half: errors ~1).
    CHECK(testutil::rel_err(y_low, y_f32) < (kRoundsActivations ? 6 : 4) * u);
  }
  // The dense path (ffn_forward) takes the same weight types.
  const auto dense_low = convert_weights<W>(f.dense());
  const auto dense_rounded = convert_weights<float>(dense_low.view());
  for (Index tokens : {2, 40}) {
    const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, 300, 10);
    RowMatrix<float> a(tokens, 300), b(tokens, 300);
    FfnWorkspace<float> ws;
    ffn_forward<float>(dense_low.view(), x, a, ws, &pool);
    ffn_forward<float>(dense_rounded.view(), x, b, ws);
    INFO("tokens=" << tokens);
    if (kRoundsActivations && tokens > detail::kFewRows)
      CHECK(testutil::rel_err(a, b) < 4 * u);
    else
      CHECK(testutil::bitwise_equal(a, b));
  }
}
