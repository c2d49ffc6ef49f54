#include <catch2/catch.hpp>
#include <moe/construction/partition.hpp>
#include <set>

using namespace moe;

TEST_CASE("ExpertPartition validates its index sets", "[partition]") {
  CHECK_THROWS_WITH(ExpertPartition(0, {{0}}), Catch::Contains("d_h must be positive"));
  CHECK_THROWS_WITH(ExpertPartition(4, {}), Catch::Contains("N = 0"));
  CHECK_THROWS_WITH(ExpertPartition(4, {{0, 1}, {}}), Catch::Contains("expert 1 has no neurons"));
  CHECK_THROWS_WITH(ExpertPartition(4, {{0, 4}}), Catch::Contains("neuron index 4 outside [0, 4)"));
  CHECK_THROWS_WITH(ExpertPartition(4, {{-1}}), Catch::Contains("neuron index -1"));
  CHECK_THROWS_WITH(ExpertPartition(4, {{1, 2, 1}}), Catch::Contains("lists neuron 1 twice"));
}

TEST_CASE("ExpertPartition reports disjointness and coverage", "[partition]") {
  const ExpertPartition disjoint(4, {{0, 2}, {1, 3}});
  CHECK(disjoint.is_disjoint());
  CHECK(disjoint.covers_all());
  const ExpertPartition shared(4, {{0, 1, 2}, {2, 3}});  // Sharing*: neuron 2 in both
  CHECK_FALSE(shared.is_disjoint());
  CHECK(shared.covers_all());
  const ExpertPartition partial(5, {{0}, {3, 4}});  // neurons 1, 2 dropped
  CHECK(partial.is_disjoint());
  CHECK_FALSE(partial.covers_all());
  CHECK(partial.expert_size(1) == 2);
  CHECK_THROWS_AS(partial.expert(2), Error);
}

TEST_CASE("independent_random cuts a seeded shuffle into N near-equal disjoint sets", "[partition]") {
  for (auto [dh, n] : {std::pair<Index, int>{2048, 4}, {688, 8}, {688, 16}, {50, 3}, {7, 7}, {10, 1}}) {
    const auto p = ExpertPartition::independent_random(dh, n, 1234);
    CHECK(p.num_experts() == n);
    CHECK(p.is_disjoint());
    CHECK(p.covers_all());
    Index total = 0;
    for (int j = 0; j < n; ++j) {
      const Index expected = dh / n + (j < dh % n ? 1 : 0);  // uneven: the first d_h % N get one more
      CHECK(p.expert_size(j) == expected);
      CHECK(std::is_sorted(p.expert(j).begin(), p.expert(j).end()));
      total += p.expert_size(j);
    }
    CHECK(total == dh);
  }
  CHECK_THROWS_WITH(ExpertPartition::independent_random(3, 4, 0), Catch::Contains("cannot split d_h=3"));
  CHECK_THROWS_WITH(ExpertPartition::independent_random(8, 0, 0), Catch::Contains("must be positive"));
}

TEST_CASE("independent_random is deterministic and platform independent", "[partition]") {
  const auto a = ExpertPartition::independent_random(688, 8, 42);
  const auto b = ExpertPartition::independent_random(688, 8, 42);
  const auto c = ExpertPartition::independent_random(688, 8, 43);
  bool differs = false;
  for (int j = 0; j < 8; ++j) {
    CHECK(a.expert(j) == b.expert(j));
    differs = differs || a.expert(j) != c.expert(j);
  }
  CHECK(differs);
  // Golden values: SplitMix64(seed 42) Fisher–Yates over [0, 10), cut 4/3/3. Integer-only, so
  // any conforming compiler and standard library must give exactly these sets.
  const auto g = ExpertPartition::independent_random(10, 3, 42);
  CHECK(g.expert(0) == std::vector<std::int32_t>{0, 5, 8, 9});
  CHECK(g.expert(1) == std::vector<std::int32_t>{4, 6, 7});
  CHECK(g.expert(2) == std::vector<std::int32_t>{1, 2, 3});
}
