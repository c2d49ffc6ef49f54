#include <catch2/catch.hpp>
#include <cstdint>
#include <moe/layer/ffn.hpp>
#include <vector>

#include "test_util.hpp"

using namespace moe;

TEMPLATE_TEST_CASE("ffn_forward matches the double reference, formula (1)", "[ffn]", float, double) {
  using T = TestType;
  // d = 300 and m = 520 span several 256-column blocks, with ragged last blocks; 293 and 389 tokens
  // run in 2 and 3 row blocks (128 + 165, 128 + 128 + 133), h read back across them.
  static_assert(detail::kRowBlock == 128, "the token counts below are chosen for 128-row blocks");
  for (auto [tokens, d, m] :
       {std::tuple<Index, Index, Index>{1, 8, 4}, {5, 300, 520}, {64, 33, 17}, {293, 33, 17}, {389, 20, 9}}) {
    const FfnWeights<T> ffn = testutil::random_ffn<T>(d, m, 1, 0.2);
    const auto x = testutil::random_matrix<RowMatrix<T>>(tokens, d, 4);
    RowMatrix<T> y(tokens, d);
    FfnWorkspace<T> ws;
    ffn_forward<T>(ffn.view(), x, y, ws);
    CHECK(testutil::rel_err(y, testutil::ref_ffn(ffn, x)) < testutil::tol<T>());
    // The workspace exposes h, the input of W_down (formula 5's h).
    const ref::Mat h = ref::ffn_hidden(x.template cast<double>(), ffn.gate.template cast<double>(),
                                       ffn.up.template cast<double>());
    CHECK(testutil::rel_err(ws.hidden(), h) < testutil::tol<T>());
  }
}

TEST_CASE("ffn_forward is bitwise identical for any thread count", "[ffn]") {
  const Index tokens = 9, d = 520, m = 700;
  const FfnWeights<float> ffn = testutil::random_ffn<float>(d, m, 11, 0.1);
  const FfnWeightsView<float> w = ffn.view();
  const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, d, 14);
  FfnWorkspace<float> ws;
  RowMatrix<float> y0(tokens, d);
  ffn_forward<float>(w, x, y0, ws);
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    RowMatrix<float> y(tokens, d);
    ffn_forward<float>(w, x, y, ws, &pool);
    CHECK(testutil::bitwise_equal(y, y0));
  }
}

TEMPLATE_TEST_CASE("Row blocks: a token row's output bits do not depend on the call's other rows", "[ffn]",
                   float, Eigen::bfloat16, Eigen::half) {
  // Past 2·kRowBlock rows the scratch is cut into row blocks (detail::num_row_blocks); each row's
  // sums must not depend on its block, nor on the thread count: 389 rows (blocks of 128, 128, 133)
  // against 170 of them in one call (one block), rows 100-269, across both block boundaries.
  using W = TestType;
  const Index d = 300, m = 520, tokens = 389, first = 100, part = 170;
  REQUIRE(detail::num_row_blocks(tokens) == 3);
  REQUIRE(detail::num_row_blocks(part) == 1);
  const FfnWeights<float> f = testutil::random_ffn<float>(d, m, 5, 0.2);
  const FfnWeights<W> w = convert_weights<W>(f.view());
  const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, d, 6);
  RowMatrix<float> all(tokens, d), some(part, d), all2(tokens, d);
  FfnWorkspace<float> ws;
  ThreadPool pool(2);
  ffn_forward<float>(w.view(), x, all, ws);
  ffn_forward<float>(w.view(), x.middleRows(first, part), some, ws, &pool);
  CHECK(testutil::bitwise_equal(RowMatrix<float>(all.middleRows(first, part)), some));
  ffn_forward<float>(w.view(), x, all2, ws, &pool);
  CHECK(testutil::bitwise_equal(all, all2));
}

TEST_CASE("ffn_forward writes through Ref without copying and rejects bad shapes", "[ffn]") {
  const Index d = 6, m = 4;
  const auto wg = testutil::random_matrix<ColMatrix<double>>(d, m, 1);
  const auto wd = testutil::random_matrix<ColMatrix<double>>(m, d, 2);
  FfnWeightsView<double> w(wg.data(), wg.data(), wd.data(), d, m);
  FfnWorkspace<double> ws;
  // A block of a bigger row-major matrix binds to Ref<RowMatrix> in place: the rows written are
  // those of the big matrix.
  RowMatrix<double> big = RowMatrix<double>::Zero(10, d);
  const auto x = testutil::random_matrix<RowMatrix<double>>(3, d, 5);
  RowRef<double> view = big.middleRows(2, 3);
  CHECK(view.data() == big.data() + 2 * d);
  ffn_forward<double>(w, x, big.middleRows(2, 3), ws);
  CHECK(big.row(0).isZero());
  CHECK(!big.row(2).isZero());
  CHECK(big.row(5).isZero());

  RowMatrix<double> y(3, d), wrong_x(3, d + 1), wrong_y(2, d);
  CHECK_THROWS_WITH(ffn_forward<double>(w, wrong_x, y, ws), Catch::Contains("x has 7 columns"));
  CHECK_THROWS_WITH(ffn_forward<double>(w, x, wrong_y, ws), Catch::Contains("y is 2x6"));
  CHECK_THROWS_AS(FfnWeightsView<double>(wg.data(), wg.data(), wg.data(), 0, 3), Error);
  FfnWeights<double> bad{ColMatrix<double>(d, m), ColMatrix<double>(d, m), ColMatrix<double>(m + 1, d)};
  CHECK_THROWS_WITH(bad.view(), Catch::Contains("W_down is 5x6"));
}

TEST_CASE("ffn_forward on zero tokens is a no-op", "[ffn]") {
  const auto wg = testutil::random_matrix<ColMatrix<float>>(4, 2, 1);
  const auto wd = testutil::random_matrix<ColMatrix<float>>(2, 4, 1);
  FfnWeightsView<float> w(wg.data(), wg.data(), wd.data(), 4, 2);
  FfnWorkspace<float> ws;
  RowMatrix<float> x(0, 4), y(0, 4);
  ffn_forward<float>(w, x, y, ws);
  CHECK(y.size() == 0);
}

TEST_CASE("ffn_forward: GeGLU, ReGLU, clamped SwiGLU and biases against double references", "[ffn]") {
  const Index d = 7, m = 9, tokens = detail::kFewRows + 2;  // both scratch layouts are covered below
  FfnWeights<double> w = testutil::random_ffn<double>(d, m, 31, 1.5);  // pre-activations reach past ±7
  w.gate_bias = testutil::random_matrix<Eigen::VectorXd>(m, 1, 41, 2.0);
  w.up_bias = testutil::random_matrix<Eigen::VectorXd>(m, 1, 42, 2.0);
  w.down_bias = testutil::random_matrix<Eigen::VectorXd>(d, 1, 43);
  const auto gelu = [](double g) { return 0.5 * g * (1 + std::erf(g / std::sqrt(2.0))); };
  const auto sig = [](double z) { return 1 / (1 + std::exp(-z)); };
  for (const Index rows : {Index(2), tokens}) {
    const auto x = testutil::random_matrix<RowMatrix<double>>(rows, d, 44);
    for (const GluActivation act :
         {GluActivation::geglu(), GluActivation::reglu(), GluActivation::clamped_swiglu(7.0)}) {
      INFO(glu_name(act.kind) << ", " << rows << " rows");
      RowMatrix<double> y(rows, d);
      FfnWorkspace<double> ws;
      ffn_forward<double>(w.view(), x, y, ws, nullptr, act);
      int clamped = 0;
      for (Index t = 0; t < rows; ++t) {
        Eigen::VectorXd h(m);
        for (Index j = 0; j < m; ++j) {
          double g = w.gate_bias(j), u = w.up_bias(j);
          for (Index i = 0; i < d; ++i) g += x(t, i) * w.gate(i, j), u += x(t, i) * w.up(i, j);
          if (act.kind == GluKind::kGeGLU) h(j) = u * gelu(g);
          if (act.kind == GluKind::kReGLU) h(j) = u * (g > 0 ? g : 0);
          if (act.kind == GluKind::kClampedSwiGLU) {
            clamped += g > 7 || std::abs(u) > 7;
            g = std::min(g, 7.0);
            u = std::max(-7.0, std::min(u, 7.0));
            h(j) = (u + 1) * g * sig(1.702 * g);
          }
        }
        for (Index i = 0; i < d; ++i) {
          double s = w.down_bias(i);
          for (Index j = 0; j < m; ++j) s += h(j) * w.down(j, i);
          CHECK(std::abs(y(t, i) - s) < 1e-12 * (1 + std::abs(s)));
        }
      }
      if (act.kind == GluKind::kClampedSwiGLU && rows == tokens) CHECK(clamped > 0);
    }
  }
  w.up_bias.resize(3);
  CHECK_THROWS_WITH(w.view(), Catch::Contains("up bias has 3 values, expected 9 or none"));
  CHECK_THROWS_WITH(GluActivation::clamped_swiglu(-1), Catch::Contains("limit -1 must be positive"));
}

TEMPLATE_TEST_CASE("Token tiles packed once (gather, hidden block) give the bits of packing in every matmul",
                   "[ffn]", float, Eigen::bfloat16) {
  // In 8-lane builds (detail::kPackTokenTiles) ffn_forward and MoELayer gather the input straight
  // into token tiles and pack h where it is computed (detail::kFloatTiles); many_rows_matmul
  // without them packs the same values itself, chunk by chunk, in every call. Same products in
  // the same order: the same bits. d = 301, m = 275: a ragged last depth block and column block;
  // 17 rows (two vectors): panel-outer, which reads the tiles instead of A in place; 40 and 200:
  // depth-block-outer, 200 in two of the kernel's own chunks (detail::kPackedRows) against one
  // packed block. bf16 weights: widened panels (no bf16 pairs without AVX-512).
  if (!detail::kFloatTiles<float, TestType>) {
    WARN("skipped: this build's kernels read no token tiles (AVX-512)");
    return;
  }
  const Index rows = GENERATE(Index{17}, Index{40}, Index{200}), d = 301, m = 275;
  INFO("rows=" << rows);
  static_assert(detail::kPackedRows < 200 && 200 < 2 * detail::kRowBlock,
                "200 rows: one row block, two chunks");
  const FfnWeights<float> f = testutil::random_ffn<float>(d, m, 3, 0.2);
  const FfnWeights<TestType> wt = convert_weights<TestType>(f.view());
  const FfnWeightsView<TestType> w = wt.view();
  const auto x = testutil::random_matrix<RowMatrix<float>>(rows, d, 5);
  REQUIRE(detail::uses_packed_activations<float, TestType>(rows));
  const Index ld = detail::scratch_rows<float>(rows), panels = detail::num_gather_panels<float>(rows);
  const auto u = [](Index n) { return static_cast<std::size_t>(n); };
  const auto src = [&](Index i) { return x.data() + i * d; };
  // Token tiles of a column-major ld x n matrix, depth block after depth block.
  const auto tiles_of = [&](const std::vector<float>& a, Index n) {
    std::vector<float> t(a.size());
    for (Index k0 = 0; k0 < n; k0 += detail::kDepthBlock)
      detail::pack_token_tiles(a.data() + k0 * ld, ld, ld, std::min(detail::kDepthBlock, n - k0),
                               t.data() + k0 * ld);
    return t;
  };

  // The gather, scaled per row as MoELayer's scale_input scales it: the tiles are the column-major
  // gather packed, and the column-major destination is left alone.
  const auto scaled = [](Index i) { return 0.5f + 0.01f * static_cast<float>(i); };
  std::vector<float> xf(u(ld * d)), untouched(u(ld * d), 7.0f), xt(u(ld * d));
  detail::gather_scratch_rows<float>(rows, d, src, scaled, xf.data(), 0, panels);
  detail::gather_scratch_rows<float>(rows, d, src, scaled, untouched.data(), 0, panels, xt.data());
  CHECK(xt == tiles_of(xf, d));
  CHECK(untouched == std::vector<float>(u(ld * d), 7.0f));

  // Hidden and down blocks (unscaled input), with and without the tiles.
  const auto one = [](Index) { return 1.0f; };
  detail::gather_scratch_rows<float>(rows, d, src, one, xf.data(), 0, panels);
  detail::gather_scratch_rows<float>(rows, d, src, one, xt.data(), 0, panels,
                                     xt.data());  // in place, as the layer
  std::vector<float> g1(u(ld * m)), h1(u(ld * m)), g2(u(ld * m)), h2(u(ld * m)), y1(u(ld * d)), y2(u(ld * d));
  std::vector<float> ht(u(ld * m));
  using Map = Eigen::Map<ColMatrix<float>, 0, Eigen::OuterStride<>>;
  const Eigen::OuterStride<> s(ld);
  const Eigen::Map<const ColMatrix<float>, 0, Eigen::OuterStride<>> xm(xf.data(), rows, d, s),
      xtm(xt.data(), rows, d, s);
  Map gm1(g1.data(), rows, m, s), hm1(h1.data(), rows, m, s), ym1(y1.data(), rows, d, s);
  Map gm2(g2.data(), rows, m, s), hm2(h2.data(), rows, m, s), ym2(y2.data(), rows, d, s);
  const detail::PackedScratch<float> tiles{xt.data(), ht.data(), ld};
  for (Index b = 0; b < detail::num_column_blocks(m); ++b) {
    detail::glu_hidden_block(w, xm, gm1, hm1, b);
    detail::glu_hidden_block(w, xtm, gm2, hm2, b, {}, tiles);
  }
  using Dense = RowMatrix<float>;  // bitwise_equal compares contiguous storage
  CHECK(testutil::bitwise_equal(Dense(hm1), Dense(hm2)));
  CHECK(ht == tiles_of(h1, m));
  for (Index b = 0; b < detail::num_column_blocks(d); ++b) {
    detail::down_proj_block(w, hm1, ym1, b);
    detail::down_proj_block(w, hm2, ym2, b, tiles);
  }
  CHECK(testutil::bitwise_equal(Dense(ym1), Dense(ym2)));

  // ffn_forward takes the tile path: the same bits as the blocks without tiles.
  RowMatrix<float> y(rows, d);
  FfnWorkspace<float> ws;
  ffn_forward<float>(w, x, y, ws);
  CHECK(testutil::bitwise_equal(y, Dense(ym1)));
}

#if defined(__AVX512BF16__) && MOE_BF16_DOT
TEST_CASE("bf16 pairs packed once (gather, hidden block) give the bits of packing in every matmul",
          "[ffn][low_precision]") {
  // With bf16 weights the many-rows kernel multiplies bf16 pairs. ffn_forward and MoELayer gather
  // the input straight into pairs and pack h where it is computed (detail::PairScratch);
  // many_rows_matmul without them packs the same float values itself, once per column block.
  // Same rounding, same products in the same order: the same bits.
  // d, m odd (a last pair with a zero high half); d > 2048: three depth blocks of pairs (two add
  // to the same bits in either order); m > 256: two column blocks; 40 rows: three vectors of rows
  // with padding, the kernel's depth-block-outer order; 17 rows (two vectors): with the packed
  // pairs, panel-outer (detail::kPanelOuterRows), against depth-block-outer packing inside
  // many_rows_matmul (reversing the depth blocks of panel-outer fails the check of h).
  const Index rows = GENERATE(Index{17}, Index{40}), d = 2101, m = 275;
  INFO("rows=" << rows);
  const FfnWeights<float> f = testutil::random_ffn<float>(d, m, 3, 0.2);
  const FfnWeights<Eigen::bfloat16> wb = convert_weights<Eigen::bfloat16>(f.view());
  const FfnWeightsView<Eigen::bfloat16> w = wb.view();
  const auto x = testutil::random_matrix<RowMatrix<float>>(rows, d, 5);
  REQUIRE(detail::uses_bf16_pairs<float, Eigen::bfloat16>(rows));
  const Index ld = detail::scratch_rows<float>(rows), panels = detail::num_gather_panels<float>(rows);
  const auto u = [](Index n) { return static_cast<std::size_t>(n); };
  const auto src = [&](Index i) { return x.data() + i * d; };

  // The gather, scaled per row as MoELayer's scale_input scales it: the pairs are the float
  // gather packed, and the float destination is left alone.
  const auto scaled = [](Index i) { return 0.5f + 0.01f * static_cast<float>(i); };
  std::vector<float> xf(u(ld * d)), untouched(u(ld * d), 7.0f);
  std::vector<std::uint32_t> xp(u((d + 1) / 2 * ld)), expect(xp.size());
  detail::gather_scratch_rows<float>(rows, d, src, scaled, xf.data(), 0, panels);
  detail::gather_scratch_rows<float>(rows, d, src, scaled, untouched.data(), 0, panels, xp.data());
  detail::pack_bf16_pairs(xf.data(), ld, ld, d, expect.data(), ld);
  CHECK(xp == expect);
  CHECK(untouched == std::vector<float>(u(ld * d), 7.0f));

  // Hidden and down blocks (unscaled input), with and without the pairs.
  const auto one = [](Index) { return 1.0f; };
  detail::gather_scratch_rows<float>(rows, d, src, one, xf.data(), 0, panels);
  detail::gather_scratch_rows<float>(rows, d, src, one, untouched.data(), 0, panels, xp.data());
  std::vector<float> g1(u(ld * m)), h1(u(ld * m)), g2(u(ld * m)), h2(u(ld * m)), y1(u(ld * d)), y2(u(ld * d));
  std::vector<std::uint32_t> hp(u((m + 1) / 2 * ld)), hp_expect(hp.size());
  using Map = Eigen::Map<ColMatrix<float>, 0, Eigen::OuterStride<>>;
  const Eigen::OuterStride<> s(ld);
  const Eigen::Map<const ColMatrix<float>, 0, Eigen::OuterStride<>> xm(xf.data(), rows, d, s);
  Map gm1(g1.data(), rows, m, s), hm1(h1.data(), rows, m, s), ym1(y1.data(), rows, d, s);
  Map gm2(g2.data(), rows, m, s), hm2(h2.data(), rows, m, s), ym2(y2.data(), rows, d, s);
  const detail::PairScratch pairs{xp.data(), hp.data(), ld};
  for (Index b = 0; b < detail::num_column_blocks(m); ++b) {
    detail::glu_hidden_block(w, xm, gm1, hm1, b);
    detail::glu_hidden_block(w, xm, gm2, hm2, b, {}, pairs);
  }
  using Dense = RowMatrix<float>;  // bitwise_equal compares contiguous storage
  CHECK(testutil::bitwise_equal(Dense(hm1), Dense(hm2)));
  detail::pack_bf16_pairs(h1.data(), ld, ld, m, hp_expect.data(), ld);
  CHECK(hp == hp_expect);
  for (Index b = 0; b < detail::num_column_blocks(d); ++b) {
    detail::down_proj_block(w, hm1, ym1, b);
    detail::down_proj_block(w, hm2, ym2, b, pairs);
  }
  CHECK(testutil::bitwise_equal(Dense(ym1), Dense(ym2)));

  // ffn_forward takes the pair path: the same bits as the blocks without pairs.
  RowMatrix<float> y(rows, d);
  FfnWorkspace<float> ws;
  ffn_forward<float>(w, x, y, ws);
  CHECK(testutil::bitwise_equal(y, Dense(ym1)));
}
#endif
