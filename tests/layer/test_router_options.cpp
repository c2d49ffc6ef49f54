// RouterOptions, route(), gate_logits() and the routing statistics on hand-computed cases.
#include <catch2/catch.hpp>
#include <cmath>
#include <moe/core/detail/rng.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/presets.hpp>
#include <moe/layer/router.hpp>
#include <moe/layer/router_gate.hpp>

#include "test_util.hpp"

using namespace moe;

namespace {

RowMatrix<double> rows(std::initializer_list<std::initializer_list<double>> v) {
  RowMatrix<double> m(static_cast<Index>(v.size()), static_cast<Index>(v.begin()->size()));
  Index i = 0;
  for (const auto& r : v) {
    Index j = 0;
    for (double x : r) m(i, j++) = x;
    ++i;
  }
  return m;
}

RouterOptions softmax_scores() {
  RouterOptions o;
  o.score = ScoreFunction::kSoftmax;
  o.select = SelectOn::kScores;
  return o;
}

double sig(double z) { return 1.0 / (1.0 + std::exp(-z)); }

}  // namespace

TEST_CASE("route: equal scores go to the lower expert index", "[router_options]") {
  const auto z = rows({{1, 2, 2, 0}});
  const double denom = std::exp(1.0) + 2 * std::exp(2.0) + 1.0;
  const auto r = route<double>(softmax_scores(), z, 2);
  CHECK(r.ids(0, 0) == 1);
  CHECK(r.ids(0, 1) == 2);
  CHECK(r.weights(0, 0) == Approx(std::exp(2.0) / denom).epsilon(1e-14));
  CHECK(route<double>(softmax_scores(), z, 1).ids(0, 0) == 1);
}

TEST_CASE("route: group-limited selection, max and sum-of-top-2 group scores", "[router_options]") {
  RouterOptions o = softmax_scores();
  o.n_group = 2;
  o.topk_group = 1;
  // Equal group scores: the lower group wins.
  const auto r = route<double>(o, rows({{3, 0, 0, 3}}), 2);
  CHECK(r.ids(0, 0) == 0);
  CHECK(r.ids(0, 1) == 1);
  // Sigmoid scores, groups of 2: group 0 has the best single expert (sigmoid 4), group 1 the best
  // top-2 sum (2·sigmoid(2) = 1.76 > sigmoid(4) + sigmoid(-4) = 1).
  o.score = ScoreFunction::kSigmoid;
  o.n_group = 3;
  const auto z = rows({{4, -4, 2, 2, 0, 0}});
  o.group_score = GroupScore::kMax;
  const auto by_max = route<double>(o, z, 2);
  CHECK(by_max.ids(0, 0) == 0);
  CHECK(by_max.ids(0, 1) == 1);
  CHECK(by_max.weights(0, 1) == Approx(sig(-4)).epsilon(1e-14));
  o.group_score = GroupScore::kTop2Sum;
  const auto by_sum = route<double>(o, z, 2);
  CHECK(by_sum.ids(0, 0) == 2);
  CHECK(by_sum.ids(0, 1) == 3);
  // Two groups kept: the experts of the dropped group (2: sigmoid 0 = 0.5 each) never appear.
  o.topk_group = 2;
  const auto two = route<double>(o, z, 4);
  for (int s = 0; s < 4; ++s) CHECK(two.ids(0, s) < 4);
  CHECK(two.ids(0, 0) == 0);  // sigmoid(4) best overall
  CHECK(two.ids(0, 3) == 1);  // sigmoid(-4) is still chosen over the excluded 0.5s
}

TEST_CASE("route: the selection bias chooses, the unbiased score weighs", "[router_options]") {
  RouterOptions o;
  o.score = ScoreFunction::kSigmoid;
  const auto z = rows({{1, 0}});
  const double bias[] = {0.0, 2.0};
  const auto r = route<double>(o, z, 1, bias);
  CHECK(r.ids(0, 0) == 1);
  CHECK(r.weights(0, 0) == 0.5);  // sigmoid(0), not sigmoid(0) + 2
  CHECK(route<double>(o, z, 1).ids(0, 0) == 0);
  const double nan_bias[] = {0.0, std::nan("")};
  CHECK_THROWS_WITH(route<double>(o, z, 1, nan_bias), Catch::Contains("selection bias of expert 1 is nan"));
}

TEST_CASE("route: renormalisation, scaling and scores over the selected logits", "[router_options]") {
  const auto z = rows({{std::log(3.0), 0.0, -30.0}});
  RouterOptions o = softmax_scores();
  // softmax ≈ [0.75, 0.25, ~0]: p-norm with p = 2.
  o.renormalize = Renormalize::kPNorm;
  o.renorm_p = 2;
  const auto pn = route<double>(o, z, 2);
  const double p0 = 3.0 / (4.0 + std::exp(-30.0)), p1 = 1.0 / (4.0 + std::exp(-30.0));
  const double norm = std::sqrt(p0 * p0 + p1 * p1);
  CHECK(pn.weights(0, 0) == Approx(p0 / norm).epsilon(1e-14));
  CHECK(pn.weights(0, 1) == Approx(p1 / norm).epsilon(1e-14));
  // L1 with epsilon, then the routed scaling factor.
  o.renormalize = Renormalize::kL1;
  o.renorm_epsilon = 0.5;
  o.routed_scaling_factor = 2.5;
  const auto l1 = route<double>(o, z, 2);
  CHECK(l1.weights(0, 0) == Approx(2.5 * p0 / (p0 + p1 + 0.5)).epsilon(1e-14));
  // GPT-OSS style: softmax over the two selected logits only = [0.75, 0.25] exactly.
  RouterOptions sel;
  sel.score_selected_only = true;
  const auto s = route<double>(sel, z, 2);
  CHECK(s.weights(0, 0) == Approx(0.75).epsilon(1e-15));
  CHECK(s.weights(0, 1) == Approx(0.25).epsilon(1e-15));
  // Llama 4 style: sigmoid of the selected logit.
  sel.score = ScoreFunction::kSigmoid;
  CHECK(route<double>(sel, rows({{0, 2, -1}}), 1).weights(0, 0) == Approx(sig(2)).epsilon(1e-15));
  // sqrt-softplus, stable for large logits; and no score function.
  RouterOptions sp;
  sp.score = ScoreFunction::kSqrtSoftplus;
  CHECK(route<double>(sp, rows({{0, -100}}), 1).weights(0, 0) ==
        Approx(std::sqrt(std::log(2.0))).epsilon(1e-15));
  CHECK(route<double>(sp, rows({{1000, 0}}), 1).weights(0, 0) == Approx(std::sqrt(1000.0)).epsilon(1e-15));
  RouterOptions none;
  none.score = ScoreFunction::kNone;
  const auto nr = route<double>(none, rows({{-1, 3, 2}}), 2);
  CHECK(nr.ids(0, 0) == 1);
  CHECK(nr.weights(0, 1) == 2.0);
}

TEST_CASE("route: k = N selects every expert, best first", "[router_options]") {
  RouterOptions o = softmax_scores();
  o.renormalize = Renormalize::kL1;
  const auto z = testutil::random_matrix<RowMatrix<double>>(5, 6, 3);
  const auto r = route<double>(o, z, 6);
  for (Index t = 0; t < 5; ++t) {
    CHECK(r.weights.row(t).sum() == Approx(1.0).epsilon(1e-14));
    for (int s = 1; s < 6; ++s) CHECK(z(t, r.ids(t, s - 1)) >= z(t, r.ids(t, s)));
    std::vector<int> seen(6, 0);
    for (int s = 0; s < 6; ++s) ++seen[static_cast<std::size_t>(r.ids(t, s))];
    CHECK(std::count(seen.begin(), seen.end(), 1) == 6);
  }
}

TEST_CASE("route: expert capacity drops latecomers in token order", "[router_options]") {
  RouterOptions o = softmax_scores();
  o.capacity_factor = 1.0;  // ceil(1 · 6 / 2) = 3 per expert
  RowMatrix<double> z(6, 2);
  for (Index t = 0; t < 6; ++t) z.row(t) << 1.0, 0.0;  // everyone prefers expert 0
  z.row(4) << 0.0, 1.0;                                // token 4 prefers expert 1
  RoutingStats stats;
  const auto r = route<double>(o, z, 1, nullptr, &stats);
  const int expect[] = {0, 0, 0, -1, 1, -1};
  for (int t = 0; t < 6; ++t) CHECK(r.ids(t, 0) == expect[t]);
  CHECK(r.weights(3, 0) == 0.0);
  CHECK(stats.dropped == 2);
  CHECK(stats.tokens_per_expert == std::vector<Index>{3, 1});
  // f_i counts the router's choice before the drop: f = [5/6, 1/6].
  const double p_hi = std::exp(1.0) / (std::exp(1.0) + 1.0);
  CHECK(stats.aux_loss ==
        Approx(2 * (5.0 / 6 * (5 * p_hi + (1 - p_hi)) / 6 + 1.0 / 6 * (5 * (1 - p_hi) + p_hi) / 6))
            .epsilon(1e-12));
  o.capacity_factor = 1.5;  // ceil(4.5) = 5: only the sixth preference for expert 0 is dropped
  RoutingStats s2;
  const auto r2 = route<double>(o, z, 1, nullptr, &s2);
  CHECK(r2.ids(5, 0) == 0);
  CHECK(s2.dropped == 0);

  // Through a layer (Switch preset): a dropped token's routed output is exactly zero.
  std::vector<FfnWeights<double>> experts = {testutil::random_ffn<double>(4, 3, 1, 0.5),
                                             testutil::random_ffn<double>(4, 3, 9, 0.5)};
  ColMatrix<double> router(4, 2);
  router << 1, 0, 1, 0, 1, 0, 1, 0;  // logit of expert 0 = sum(x), of expert 1 = 0
  const MoELayer<double> layer(experts, router, presets::switch_transformer(1.0));
  RowMatrix<double> x = RowMatrix<double>::Constant(6, 4, 0.5), y(6, 4);
  MoEWorkspace<double> ws;
  RoutingRecord<double> rec;
  layer.forward(x, y, ws, nullptr, &rec);
  CHECK(rec.stats.dropped == 3);
  CHECK(y.row(3).isZero(0));
  CHECK(y.row(5).isZero(0));
  CHECK_FALSE(y.row(0).isZero(0));
  CHECK(ws.dispatch().offsets.back() == 3);  // only the kept rows were computed
}

TEST_CASE("routing statistics on a hand-computed routing", "[router_options]") {
  // Token 0: logits [0, 0] (tie → expert 0, p = 0.5); token 1: [ln 3, 0] (p = [0.75, 0.25]).
  const auto z = rows({{0, 0}, {std::log(3.0), 0}});
  RoutingStats s;
  const auto r = route<double>(softmax_scores(), z, 1, nullptr, &s);
  CHECK(r.ids(0, 0) == 0);
  CHECK(r.ids(1, 0) == 0);
  CHECK(s.tokens == 2);
  CHECK(s.tokens_per_expert == std::vector<Index>{2, 0});
  CHECK(s.importance[0] == Approx(1.25).epsilon(1e-14));
  CHECK(s.importance[1] == 0.0);
  // load [2, 0]: mean 1, unbiased variance 2 → 2 / (1 + 1e-10); importance [1.25, 0] likewise 2.
  CHECK(s.cv2_tokens == Approx(2.0 / (1.0 + 1e-10)).epsilon(1e-14));
  CHECK(s.cv2_importance == Approx(0.78125 / (0.390625 + 1e-10)).epsilon(1e-14));
  CHECK(s.aux_loss == Approx(2 * 1.0 * 0.625).epsilon(1e-14));  // N · f_0 · P_0
  const double ln2 = std::log(2.0);
  CHECK(s.z_loss == Approx((ln2 * ln2 + 4 * ln2 * ln2) / 2).epsilon(1e-14));
  CHECK(s.entropy == Approx((ln2 - 0.75 * std::log(0.75) - 0.25 * std::log(0.25)) / 2).epsilon(1e-14));
  CHECK(s.dropped == 0);
  CHECK(cv_squared({3.0}) == 0.0);
}

TEST_CASE("gate_logits: router bias, LLaMA-MoE MLP gate, seeded noise", "[router_options]") {
  const Index d = 5, n = 4, t = 3;
  const auto x = testutil::random_matrix<RowMatrix<double>>(t, d, 11);
  RouterGate<double> gate(testutil::random_matrix<ColMatrix<double>>(d, n, 12));
  RowMatrix<double> z(t, n);
  GateScratch<double> scratch;
  RouterOptions o;
  gate.bias = testutil::random_matrix<Eigen::VectorXd>(n, 1, 13);
  gate_logits<double>(gate, o, x, z, scratch);
  for (Index i = 0; i < t; ++i)
    for (Index e = 0; e < n; ++e) {
      double s = gate.bias(e);
      for (Index j = 0; j < d; ++j) s += x(i, j) * gate.weight(j, e);
      CHECK(z(i, e) == Approx(s).epsilon(1e-13));
    }
  // MLP gate: z = tanh(x·W1)·W2.
  RouterGate<double> mlp(testutil::random_matrix<ColMatrix<double>>(d, n, 14));
  mlp.mlp_out = testutil::random_matrix<ColMatrix<double>>(n, n, 15);
  gate_logits<double>(mlp, o, x, z, scratch);
  for (Index i = 0; i < t; ++i)
    for (Index e = 0; e < n; ++e) {
      double s = 0;
      for (Index h = 0; h < n; ++h) {
        double a = 0;
        for (Index j = 0; j < d; ++j) a += x(i, j) * mlp.weight(j, h);
        s += std::tanh(a) * mlp.mlp_out(h, e);
      }
      CHECK(z(i, e) == Approx(s).epsilon(1e-13));
    }
  // Noise: W_noise = 0 makes the noise scale softplus(0) + 0.01 = ln 2 + 0.01, drawn in
  // (token, expert) order from SplitMix64(seed).
  RowMatrix<double> clean = z, noisy(t, n), again(t, n), other(t, n);
  CHECK_THROWS_WITH(
      gate_logits<double>(mlp, presets::llama_moe_gate(2, 1.0, true, 5).router, x, noisy, scratch),
      Catch::Contains("no noise weight"));
  mlp.noise = ColMatrix<double>::Zero(d, n);
  const RouterOptions train = presets::llama_moe_gate(2, 1.0, true, 5).router;
  gate_logits<double>(mlp, train, x, noisy, scratch);
  detail::SplitMix64 rng(5);
  for (Index i = 0; i < t; ++i)
    for (Index e = 0; e < n; ++e)
      CHECK(noisy(i, e) - clean(i, e) == Approx(rng.normal() * (std::log(2.0) + 0.01)).epsilon(1e-12));
  gate_logits<double>(mlp, train, x, again, scratch);
  CHECK(testutil::bitwise_equal(noisy, again));
  gate_logits<double>(mlp, presets::llama_moe_gate(2, 1.0, true, 6).router, x, other, scratch);
  CHECK_FALSE(testutil::bitwise_equal(noisy, other));
}

TEST_CASE("RouterOptions and route reject inconsistent settings by name", "[router_options]") {
  RouterOptions o = softmax_scores();
  const auto z = rows({{1, 2, 3, 4, 5, 6}});
  o.n_group = 4;
  CHECK_THROWS_WITH(route<double>(o, z, 2), Catch::Contains("n_group=4 must be >= 1 and divide N=6"));
  o.n_group = 3;
  o.topk_group = 4;
  CHECK_THROWS_WITH(route<double>(o, z, 2), Catch::Contains("topk_group=4 must be in [1, n_group=3]"));
  o.topk_group = 1;
  CHECK_THROWS_WITH(route<double>(o, z, 3), Catch::Contains("k=3 exceeds the 2 experts"));
  o.n_group = 6;
  o.group_score = GroupScore::kTop2Sum;
  CHECK_THROWS_WITH(route<double>(o, z, 1), Catch::Contains("at least 2 experts per group"));
  o = softmax_scores();
  o.capacity_factor = 0.0;
  CHECK_THROWS_WITH(route<double>(o, z, 1), Catch::Contains("capacity_factor 0 must be finite and > 0"));
  o = softmax_scores();
  o.renormalize = Renormalize::kPNorm;
  o.renorm_p = 0;
  CHECK_THROWS_WITH(route<double>(o, z, 1), Catch::Contains("renorm_p 0 must be > 0"));
  o = softmax_scores();
  CHECK_THROWS_WITH(route<double>(o, z, 7), Catch::Contains("k=7 must be in [1, N=6]"));
  CHECK_THROWS_WITH(route<double>(o, rows({{1, std::nan("")}}), 1),
                    Catch::Contains("router logit for token 0, expert 1 is nan"));
}

TEST_CASE("MoELayer: k per call, with the N/k scale following it", "[router_options]") {
  const Index d = 6, m = 5;
  const int n = 4;
  std::vector<FfnWeights<double>> experts;
  for (int e = 0; e < n; ++e) experts.push_back(testutil::random_ffn<double>(d, m, 100 + 3 * e, 0.4));
  const auto router = testutil::random_matrix<ColMatrix<double>>(d, n, 7);
  const MoELayer<double> layer(experts, router, presets::llama_moe_reference(2));
  const auto x = testutil::random_matrix<RowMatrix<double>>(9, d, 8);
  RowMatrix<double> y(9, d);
  MoEWorkspace<double> ws;
  layer.forward(x, 3, y, ws);
  // Reference: softmax over N, top-3 (stable), weights p_i, × N/3.
  for (Index t = 0; t < 9; ++t) {
    std::vector<double> p(n);
    double mx = -1e300, s = 0;
    for (int e = 0; e < n; ++e) mx = std::max(mx, (x.row(t) * router.col(e))(0));
    for (int e = 0; e < n; ++e)
      s += (p[static_cast<std::size_t>(e)] = std::exp((x.row(t) * router.col(e))(0) - mx));
    std::vector<int> idx = {0, 1, 2, 3};
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
    ref::Mat yt = ref::Mat::Zero(1, d);
    for (int j = 0; j < 3; ++j)
      yt += p[static_cast<std::size_t>(idx[j])] / s * testutil::ref_ffn(experts[idx[j]], x.row(t));
    CHECK(testutil::rel_err(y.row(t), yt * (4.0 / 3.0)) < 1e-12);
  }
  CHECK_THROWS_WITH(layer.forward(x, 5, y, ws), Catch::Contains("k=5 must be in [1, N=4]"));
}

TEST_CASE("LLaMA-MoE released gate and Switch presets through a layer, against double references",
          "[router_options]") {
  const Index d = 6, m = 5, tokens = 8;
  const int n = 4;
  std::vector<FfnWeights<double>> experts;
  for (int e = 0; e < n; ++e) experts.push_back(testutil::random_ffn<double>(d, m, 200 + 3 * e, 0.4));
  const auto x = testutil::random_matrix<RowMatrix<double>>(tokens, d, 21);
  const auto expert_out = [&](int e, Index t) {
    return testutil::ref_ffn(experts[static_cast<std::size_t>(e)], x.row(t));
  };
  MoEWorkspace<double> ws;
  RowMatrix<double> y(tokens, d);

  // LLaMA-MoE gate: z = tanh(x·W1)·W2, top-2 of z, softmax over the two, output × 4.
  RouterGate<double> mlp(testutil::random_matrix<ColMatrix<double>>(d, n, 22));
  mlp.mlp_out = testutil::random_matrix<ColMatrix<double>>(n, n, 23);
  const MoELayer<double> gate_layer(experts, mlp, presets::llama_moe_gate(2, 4.0));
  gate_layer.forward(x, y, ws);
  for (Index t = 0; t < tokens; ++t) {
    std::vector<double> z(n, 0.0);
    for (int e = 0; e < n; ++e)
      for (int h = 0; h < n; ++h) z[e] += std::tanh((x.row(t) * mlp.weight.col(h))(0)) * mlp.mlp_out(h, e);
    const auto idx = ref::top_k(z, 2);
    const double e0 = std::exp(z[idx[0]]), e1 = std::exp(z[idx[1]]);
    const ref::Mat yt =
        4.0 * (e0 / (e0 + e1) * expert_out(idx[0], t) + e1 / (e0 + e1) * expert_out(idx[1], t));
    CHECK(testutil::rel_err(y.row(t), yt) < 1e-12);
  }

  // Switch, capacity ceil(0.5 · 8 / 4) = 1: each expert keeps its first token; the kept token's
  // output is p_max · E(x), every other token's is 0.
  const auto router = testutil::random_matrix<ColMatrix<double>>(d, n, 24);
  const MoELayer<double> sw(experts, router, presets::switch_transformer(0.5));
  RoutingRecord<double> rec;
  sw.forward(x, y, ws, nullptr, &rec);
  std::vector<int> taken(n, 0);
  Index dropped = 0;
  for (Index t = 0; t < tokens; ++t) {
    std::vector<double> z(n);
    for (int e = 0; e < n; ++e) z[e] = (x.row(t) * router.col(e))(0);
    const std::vector<double> p = ref::softmax(z);
    const int best = ref::top_k(p, 1)[0];
    if (taken[best]++ == 0) {
      CHECK(testutil::rel_err(y.row(t), p[best] * expert_out(best, t)) < 1e-12);
    } else {
      CHECK(y.row(t).isZero(0));
      ++dropped;
    }
  }
  CHECK(dropped > 0);
  CHECK(rec.stats.dropped == dropped);
}
