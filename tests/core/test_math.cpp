#include <catch2/catch.hpp>
#include <cmath>
#include <moe/core/math.hpp>

#include "reference/reference.hpp"

TEMPLATE_TEST_CASE("silu and sigmoid match their definitions", "[math]", float, double) {
  for (double z : {-20.0, -3.5, -1.0, 0.0, 0.25, 1.0, 7.0, 30.0}) {
    const double s = 1.0 / (1.0 + std::exp(-z));
    CHECK(moe::sigmoid<TestType>(TestType(z)) == Approx(s).epsilon(1e-6));
    CHECK(moe::silu<TestType>(TestType(z)) == Approx(z * s).epsilon(1e-6).margin(1e-30));
  }
  CHECK(moe::silu<TestType>(TestType(0)) == 0);
}

TEMPLATE_TEST_CASE("softmax is stable and sums to one", "[math]", float, double) {
  // exp(1000) overflows without the max subtraction.
  const TestType z[4] = {1000, 999, 998, 1000};
  TestType p[4];
  moe::softmax(z, 4, p);
  const std::vector<double> expect = ref::softmax({1000, 999, 998, 1000});
  for (int i = 0; i < 4; ++i) CHECK(p[i] == Approx(expect[static_cast<std::size_t>(i)]).epsilon(1e-6));
  CHECK(p[0] + p[1] + p[2] + p[3] == Approx(1.0).epsilon(1e-6));
}

TEST_CASE("top_k orders best first and breaks ties by the lower index", "[math]") {
  const float v[6] = {0.5f, 2.0f, 2.0f, -1.0f, 2.0f, 1.0f};
  int idx[3];
  float val[3];
  moe::top_k(v, 6, 3, idx, val);
  CHECK(idx[0] == 1);
  CHECK(idx[1] == 2);
  CHECK(idx[2] == 4);
  moe::top_k(v, 6, 1, idx, val);
  CHECK(idx[0] == 1);
  int all[6];
  float allv[6];
  moe::top_k(v, 6, 6, all, allv);  // k = N: a full sort, ties stable
  const int expect[6] = {1, 2, 4, 5, 0, 3};
  for (int i = 0; i < 6; ++i) CHECK(all[i] == expect[i]);
}

TEST_CASE("top_k agrees with a stable-sort reference on random data", "[math]") {
  std::uint64_t s = 7;
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + trial % 17, k = 1 + (trial * 7) % n;
    std::vector<double> v(static_cast<std::size_t>(n));
    for (auto& x : v)
      x = static_cast<double>((s = s * 6364136223846793005ULL + 1442695040888963407ULL) >>
                              60);  // few values: many ties
    std::vector<int> idx(static_cast<std::size_t>(k));
    std::vector<double> val(static_cast<std::size_t>(k));
    moe::top_k(v.data(), n, k, idx.data(), val.data());
    CHECK(idx == ref::top_k(v, k));
  }
}
