// Expert construction: balanced k-means, the six partition methods' invariants, per-cluster
// importance, router initialisation and the oracle recall — on hand-computed cases, brute force
// and double-precision loops.
#include <catch2/catch.hpp>
#include <moe/construction/expert_construction.hpp>
#include <moe/construction/importance.hpp>
#include <moe/construction/router_init.hpp>
#include <set>

#include "test_util.hpp"

using namespace moe;
using testutil::random_matrix;

namespace {

std::vector<std::size_t> sizes_of(const ExpertPartition& p) {
  std::vector<std::size_t> s;
  for (int j = 0; j < p.num_experts(); ++j) s.push_back(p.expert(j).size());
  return s;
}

/// k-means objective of a labelling with its own cluster means, in double.
double objective_of(const RowMatrix<double>& pts, const std::vector<int>& labels, int k) {
  RowMatrix<double> c = RowMatrix<double>::Zero(k, pts.cols());
  std::vector<int> n(static_cast<std::size_t>(k), 0);
  for (Index p = 0; p < pts.rows(); ++p) {
    c.row(labels[static_cast<std::size_t>(p)]) += pts.row(p);
    ++n[static_cast<std::size_t>(labels[static_cast<std::size_t>(p)])];
  }
  for (int j = 0; j < k; ++j) c.row(j) /= n[static_cast<std::size_t>(j)];
  double s = 0;
  for (Index p = 0; p < pts.rows(); ++p)
    s += (pts.row(p) - c.row(labels[static_cast<std::size_t>(p)])).squaredNorm();
  return s;
}

std::vector<int> labels_of(const ExpertPartition& p) {
  std::vector<int> l(static_cast<std::size_t>(p.hidden_dim()), -1);
  for (int j = 0; j < p.num_experts(); ++j)
    for (const auto i : p.expert(j)) l[static_cast<std::size_t>(i)] = j;
  return l;
}

}  // namespace

TEST_CASE("balanced assignment is the minimum-cost one (brute force over all balanced labellings)",
          "[kmeans]") {
  // 6 points, 3 clusters of 2: 90 labellings; the successive-shortest-path result must cost the least.
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    const RowMatrix<double> cost = random_matrix<RowMatrix<double>>(6, 3, seed).cwiseAbs();
    const std::vector<int> got = detail::balanced_assignment(cost, {2, 2, 2});
    std::vector<int> count(3, 0);
    for (const int l : got) ++count[static_cast<std::size_t>(l)];
    REQUIRE(count == std::vector<int>{2, 2, 2});
    double best = 1e300;
    std::vector<int> l(6);
    for (int code = 0; code < 729; ++code) {
      int c = code;
      std::vector<int> n(3, 0);
      for (int p = 0; p < 6; ++p, c /= 3)
        ++n[static_cast<std::size_t>(l[static_cast<std::size_t>(p)] = c % 3)];
      if (n == std::vector<int>{2, 2, 2}) best = std::min(best, detail::kmeans_objective(cost, l));
    }
    CHECK(detail::kmeans_objective(cost, got) == Approx(best).epsilon(1e-12));
  }
}

TEST_CASE("balanced k-means: exact sizes, deterministic, never worse than random balanced splits",
          "[kmeans]") {
  const RowMatrix<double> pts = random_matrix<RowMatrix<double>>(60, 5, 7);
  const KMeansResult a = balanced_kmeans(pts, 4, 3), b = balanced_kmeans(pts, 4, 3);
  CHECK(a.labels == b.labels);
  std::vector<int> n(4, 0);
  for (const int l : a.labels) ++n[static_cast<std::size_t>(l)];
  CHECK(n == std::vector<int>{15, 15, 15, 15});
  CHECK(a.objective == Approx(objective_of(pts, a.labels, 4)).epsilon(1e-10));
  for (std::uint64_t s = 0; s < 20; ++s) {
    const ExpertPartition r = ExpertPartition::independent_random(60, 4, s);
    CHECK(a.objective <= objective_of(pts, labels_of(r), 4));
  }
  // 61 points: the first cluster takes the extra one.
  const KMeansResult odd = balanced_kmeans(random_matrix<RowMatrix<double>>(61, 3, 8), 4, 1);
  std::vector<int> m(4, 0);
  for (const int l : odd.labels) ++m[static_cast<std::size_t>(l)];
  CHECK(m == std::vector<int>{16, 15, 15, 15});
  CHECK_THROWS_WITH(balanced_kmeans(pts.topRows(3), 4, 0),
                    Catch::Contains("cannot make 4 non-empty clusters of 3"));
  RowMatrix<double> bad = pts;
  bad(3, 2) = std::nan("");
  CHECK_THROWS_WITH(balanced_kmeans(bad, 4, 0), Catch::Contains("NaN"));
}

TEST_CASE("plain k-means separates planted clusters and keeps every cluster non-empty", "[kmeans]") {
  RowMatrix<double> pts = 0.01 * random_matrix<RowMatrix<double>>(30, 2, 5);
  for (Index p = 0; p < 30; ++p) pts(p, 0) += 10.0 * static_cast<double>(p % 3);  // centres 0, 10, 20
  const KMeansResult r = kmeans(pts, 3, 9);
  for (Index p = 0; p < 30; ++p)
    CHECK(r.labels[static_cast<std::size_t>(p)] == r.labels[static_cast<std::size_t>(p % 3)]);
  std::set<int> distinct(r.labels.begin(), r.labels.end());
  CHECK(distinct.size() == 3);
  // Duplicated points: still k non-empty clusters.
  const KMeansResult dup = kmeans(RowMatrix<double>::Ones(5, 2), 3, 1);
  CHECK(std::set<int>(dup.labels.begin(), dup.labels.end()).size() == 3);
}

TEST_CASE("independent clustering: equal disjoint experts, better than random on its objective",
          "[partition]") {
  const ColMatrix<float> up = random_matrix<ColMatrix<float>>(8, 48, 11);
  const ConstructedPartition c = independent_clustering<float>(up, 4, 2);
  CHECK(c.partition.is_disjoint());
  CHECK(c.partition.covers_all());
  CHECK(sizes_of(c.partition) == std::vector<std::size_t>(4, 12));
  CHECK(labels_of(independent_clustering<float>(up, 4, 2).partition) == labels_of(c.partition));
  RowMatrix<double> pts = up.cast<double>().transpose();
  pts.rowwise().normalize();
  CHECK(c.objective == Approx(objective_of(pts, labels_of(c.partition), 4)).epsilon(1e-9));
  for (std::uint64_t s = 0; s < 20; ++s)
    CHECK(c.objective <= objective_of(pts, labels_of(ExpertPartition::independent_random(48, 4, s)), 4));
  CHECK_THROWS_WITH(independent_clustering<float>(up, 5, 0), Catch::Contains("N=5 must divide d_h=48"));
}

TEST_CASE("co-activation partition recovers planted groups; its cut is the graph's", "[partition]") {
  // 12 neurons in 3 groups of 4; group g fires only on tokens t with t % 3 == g.
  RowMatrix<float> h = RowMatrix<float>::Zero(30, 12);
  const RowMatrix<float> noise = random_matrix<RowMatrix<float>>(30, 12, 3);
  const int group_of[12] = {0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2};
  for (Index t = 0; t < 30; ++t)
    for (Index i = 0; i < 12; ++i)
      if (group_of[i] == t % 3) h(t, i) = 1.0f + 0.1f * noise(t, i);
  const ConstructedPartition c = coactivation_partition<float>(h, 3, 4);
  const std::vector<int> l = labels_of(c.partition);
  for (Index i = 0; i < 12; ++i)
    for (Index j = 0; j < 12; ++j)
      CHECK((l[static_cast<std::size_t>(i)] == l[static_cast<std::size_t>(j)]) ==
            (group_of[i] == group_of[j]));
  CHECK(c.objective == Approx(0.0).margin(1e-12));  // groups never co-fire: nothing is cut
  // On dense data the reported cut equals Σ_{a,b apart} A_ab / Σ A_ab with A = |h|ᵀ|h|.
  const RowMatrix<float> dense = random_matrix<RowMatrix<float>>(20, 12, 6);
  const ConstructedPartition d = coactivation_partition<float>(dense, 3, 1);
  const Eigen::MatrixXd a = dense.cast<double>().cwiseAbs().transpose() * dense.cast<double>().cwiseAbs();
  const std::vector<int> dl = labels_of(d.partition);
  double cut = 0;
  for (Index i = 0; i < 12; ++i)
    for (Index j = 0; j < 12; ++j)
      if (dl[static_cast<std::size_t>(i)] != dl[static_cast<std::size_t>(j)]) cut += a(i, j);
  CHECK(d.objective == Approx(cut / a.sum()).epsilon(1e-10));
  CHECK(sizes_of(d.partition) == std::vector<std::size_t>(3, 4));
  CHECK_THROWS_WITH(coactivation_partition<float>(dense, 5, 1), Catch::Contains("N=5 must divide d_h=12"));
}

TEST_CASE("sharing-inner: each expert is its cluster's top m, overlaps allowed, ties to the lower index",
          "[partition]") {
  Eigen::MatrixXd v(2, 5);
  v << 5, 4, 3, 2, 1,  //
      1, 9, 9, 0, 0;
  const ExpertPartition p = sharing_inner(v, 2);
  CHECK(p.expert(0) == std::vector<std::int32_t>{0, 1});
  CHECK(p.expert(1) == std::vector<std::int32_t>{1, 2});
  CHECK_FALSE(p.is_disjoint());
  CHECK_FALSE(p.covers_all());
  Eigen::MatrixXd ties = Eigen::MatrixXd::Ones(1, 4);
  CHECK(sharing_inner(ties, 2).expert(0) == std::vector<std::int32_t>{0, 1});
  CHECK_THROWS_WITH(sharing_inner(v, 6), Catch::Contains("expert size m=6 must be in [1, d_h=5]"));
  v(1, 3) = std::nan("");
  CHECK_THROWS_WITH(sharing_inner(v, 2), Catch::Contains("NaN"));
}

TEST_CASE("gradient split: greedy by importance, equal sizes, disjoint and complete", "[partition]") {
  // Most valued pairs in order: (e1, n1)=9, (e1, n2)=8 → e1 full; e0 takes n0 (5), then n3 (2).
  Eigen::MatrixXd v(2, 4);
  v << 5, 4, 3, 2,  //
      1, 9, 8, 0;
  const ExpertPartition p = gradient_partition(v);
  CHECK(p.expert(0) == std::vector<std::int32_t>{0, 3});
  CHECK(p.expert(1) == std::vector<std::int32_t>{1, 2});
  // Larger random case: the invariants and determinism.
  const Eigen::MatrixXd r = random_matrix<Eigen::MatrixXd>(5, 43, 2).cwiseAbs();
  const ExpertPartition q = gradient_partition(r);
  CHECK(q.is_disjoint());
  CHECK(q.covers_all());
  CHECK(sizes_of(q) == std::vector<std::size_t>{9, 9, 9, 8, 8});
  CHECK(labels_of(gradient_partition(r)) == labels_of(q));
}

TEST_CASE("sharing-inter: the most shared neurons become residual experts; the rest split evenly",
          "[partition]") {
  // 3 clusters, top-2 each: cluster 0 {0,1}, 1 {0,2}, 2 {0,3} → neuron 0 (3 votes) is residual;
  // next round {1,2}, {2,4}, {3,5}... neuron 2 has 2 votes → residual. R=1 expert of 2.
  Eigen::MatrixXd v(3, 9);
  v << 9, 8, 1, 1, 0, 0, 0, 0, 0,  //
      9, 1, 8, 0, 7, 0, 0, 0, 0,   //
      9, 0, 7, 8, 0, 6, 0, 0, 0;
  const ResidualPartition rp = sharing_inter(v, 1, 2);
  CHECK(rp.residual.num_experts() == 1);
  CHECK(rp.residual.expert(0) == std::vector<std::int32_t>{0, 2});
  CHECK(rp.routed.num_experts() == 3);
  std::vector<int> owners(9, 0);
  for (const ExpertPartition* p : {&rp.routed, &rp.residual})
    for (int j = 0; j < p->num_experts(); ++j)
      for (const auto i : p->expert(j)) ++owners[static_cast<std::size_t>(i)];
  CHECK(owners == std::vector<int>(9, 1));  // disjoint, covering all 9
  CHECK(sizes_of(rp.routed) == std::vector<std::size_t>{3, 2, 2});
  // Greedy over {1,3,4,5,6,7,8}: e0←1 (8, tie with e2 to the lower expert), e2←3 (8), e1←4 (7),
  // e2←5 (6); the zero-valued rest in index order to the lowest expert with room.
  CHECK(rp.routed.expert(0) == std::vector<std::int32_t>{1, 6, 7});
  CHECK(rp.routed.expert(1) == std::vector<std::int32_t>{4, 8});
  CHECK(rp.routed.expert(2) == std::vector<std::int32_t>{3, 5});
  CHECK_THROWS_WITH(sharing_inter(v, 3, 3), Catch::Contains("leave fewer than N=3"));
  CHECK_THROWS_WITH(sharing_inter(v, 0, 2), Catch::Contains("R >= 1"));
}

TEST_CASE("per-cluster importance: formula (5) per cluster, and the activation split of a global vector",
          "[importance]") {
  const RowMatrix<float> h = random_matrix<RowMatrix<float>>(10, 6, 1),
                         g = random_matrix<RowMatrix<float>>(10, 6, 2);
  const std::vector<int> cl = {0, 1, 2, 0, 1, 2, 0, 0, 1, 2};
  const Eigen::MatrixXd v = cluster_importance<float>(h, g, cl, 3);
  for (int c = 0; c < 3; ++c)
    for (Index i = 0; i < 6; ++i) {
      double s = 0;
      for (Index t = 0; t < 10; ++t)
        if (cl[static_cast<std::size_t>(t)] == c) s += std::abs(double(h(t, i)) * double(g(t, i)));
      CHECK(v(c, i) == Approx(s).epsilon(1e-12));
    }
  // With |dL/dh| constant per neuron, the activation split of the total is exact.
  RowMatrix<float> gc(10, 6);
  for (Index t = 0; t < 10; ++t) gc.row(t) = Eigen::RowVectorXf::LinSpaced(6, 0.5f, 3.0f);
  const Eigen::MatrixXd exact = cluster_importance<float>(h, gc, cl, 3);
  const Eigen::MatrixXd split =
      split_importance_by_activation<float>(exact.colwise().sum().transpose(), h, cl, 3);
  CHECK((split - exact).cwiseAbs().maxCoeff() < 1e-12 * exact.maxCoeff());
  RowMatrix<float> silent = h;
  silent.col(4).setZero();
  const Eigen::VectorXd ones = Eigen::VectorXd::Ones(6);
  CHECK(split_importance_by_activation<float>(ones, silent, cl, 3)
            .col(4)
            .isApprox(Eigen::VectorXd::Constant(3, 1.0 / 3)));
  CHECK_THROWS_WITH(cluster_importance<float>(h, g, {0, 1}, 3),
                    Catch::Contains("2 cluster labels for 10 tokens"));
  CHECK_THROWS_WITH(cluster_importance<float>(h, g, std::vector<int>(10, 3), 3),
                    Catch::Contains("token 0 has cluster 3"));
}

TEST_CASE("expert activation mass and the oracle top-k recall, by hand", "[router_init]") {
  RowMatrix<float> h(2, 4);
  h << 1, -2, 3, 0.5f,  //
      -4, 0, 1, 1;
  const ExpertPartition p(4, {{0, 1}, {2}, {3}});
  const RowMatrix<double> m = expert_activation_mass<float>(h, p);
  RowMatrix<double> want(2, 3);
  want << 3, 3, 0.5,  //
      4, 1, 1;
  CHECK(m == want);
  // Oracle top-2: token 0 {0, 1} (a tie: 0 first), token 1 {0, then 1 over 2 by the lower index}.
  CHECK(oracle_top_k_recall(m, m, 2) == 1.0);
  RowMatrix<float> z(2, 3);
  z << 0, 1, 2,  // picks {2, 1}: one hit of 2
      5, 0, 1;   // picks {0, 2}: one hit
  CHECK(oracle_top_k_recall(z, m, 2) == 0.5);
  CHECK(oracle_top_k_recall(z, m, 3) == 1.0);
  CHECK_THROWS_WITH(oracle_top_k_recall(z, m, 4), Catch::Contains("k=4 must be in [1, N=3]"));
}

TEST_CASE("router initialisations: random bounds and seeds, centroids, least-squares fit", "[router_init]") {
  const RouterGate<float> a = random_router(16, 4, 7), b = random_router(16, 4, 7),
                          c = random_router(16, 4, 8);
  CHECK(a.weight == b.weight);
  CHECK(a.mlp_out == b.mlp_out);
  CHECK(a.weight != c.weight);
  CHECK(a.weight.cwiseAbs().maxCoeff() <= 0.25f);  // 1/sqrt(16)
  CHECK(a.mlp_out.cwiseAbs().maxCoeff() <= 0.5f);  // 1/sqrt(4)
  CHECK(a.weight.cwiseAbs().maxCoeff() > 0.2f);
  CHECK(a.noise == ColMatrix<float>::Zero(16, 4));

  ColMatrix<float> up(2, 3);
  up << 3, 0, 1,  //
      4, 2, 1;
  const ColMatrix<float> cr = centroid_router<float>(up, ExpertPartition(3, {{0, 1}, {2}}));
  CHECK(cr(0, 0) == Approx((0.6 + 0.0) / 2));
  CHECK(cr(1, 0) == Approx((0.8 + 1.0) / 2));
  CHECK(cr(0, 1) == Approx(std::sqrt(0.5)));

  // A planted linear map is recovered (ridge 0) from noiseless data.
  const RowMatrix<float> x = random_matrix<RowMatrix<float>>(40, 6, 3);
  const ColMatrix<double> w = random_matrix<ColMatrix<double>>(6, 3, 4);
  const RowMatrix<double> mass = x.cast<double>() * w;
  const ColMatrix<float> fit = fit_router<float>(x, mass, 0.0);
  CHECK((fit.cast<double>() - w).cwiseAbs().maxCoeff() < 1e-5);
  CHECK_THROWS_WITH(fit_router<float>(x.topRows(5), mass, 0.0),
                    Catch::Contains("5 calibration tokens but mass for 40"));
}
