// moe_bench — what a sparse MoE FFN buys over the dense FFN it was split from.
//
// LLaMA-2-7B FFN shape (d = 4096, d_h = 11008), float32, split LLaMA-MoE style into N = 8 (top-2)
// and N = 16 (top-4) experts. For T tokens per call:
//   dense/...            ffn_forward of the dense FFN                       (formula 1)
//   moe/...              MoELayer::forward: router, dispatch, routed experts only, combine
//   moe_all_experts/...  the NumPy reference's way: every expert on every token, then top-k
// All three use the same ThreadPool (all cores). Counters: GFLOP/s of the FFN math performed
// (2·3·d·m per token and expert run) and GB/s of the expert weights the call touched.
//
// Run:  build/bench/moe_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// and bench/report.py turns its JSON output into the README's table of MoE/dense ratios.
#include <benchmark/benchmark.h>

#include <cmath>
#include <map>
#include <memory>
#include <moe/moe.hpp>
#include <set>
#include <string>

using namespace moe;

namespace {

constexpr Index kD = 4096, kDh = 11008;
constexpr Index kTokens[] = {1, 8, 64, 512};

ColMatrix<float> gaussian(Index rows, Index cols, double sd, std::uint64_t seed) {
  detail::SplitMix64 rng(seed);
  ColMatrix<float> m(rows, cols);
  // Uniform with the same variance: as good as Gaussian for timing, and much faster to make.
  const double a = sd * std::sqrt(3.0);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(a * (2 * rng.uniform() - 1));
  return m;
}

struct Dense {
  ColMatrix<float> gate = gaussian(kD, kDh, 0.02, 1), up = gaussian(kD, kDh, 0.02, 2),
                   down = gaussian(kDh, kD, 0.02, 3);
  FfnWeightsView<float> view() const { return {gate.data(), up.data(), down.data(), kD, kDh}; }
};

Dense& dense() {
  static Dense d;
  return d;
}
ThreadPool& pool() {
  static ThreadPool p;
  return p;
}
RowMatrix<float> input(Index tokens) {
  return RowMatrix<float>(gaussian(tokens, kD, 1.0, 100 + static_cast<std::uint64_t>(tokens)));
}

MoELayer<float>& layer(int n, int k) {
  static std::map<std::pair<int, int>, std::unique_ptr<MoELayer<float>>> layers;
  auto& l = layers[{n, k}];
  if (!l) {
    const auto partition = ExpertPartition::independent_random(kDh, n, 42);
    // Router N(0, 1/d): balanced routing on random inputs, as a trained router aims for.
    l = std::make_unique<MoELayer<float>>(slice_experts(dense().view(), partition),
                                          gaussian(kD, n, 1.0 / std::sqrt(double(kD)), 7), MoEConfig{k});
  }
  return *l;
}

void set_counters(benchmark::State& state, double flops, double weight_bytes) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_GB/s"] =
      benchmark::Counter(weight_bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void bm_dense(benchmark::State& state, Index tokens) {
  const auto x = input(tokens);
  RowMatrix<float> y(tokens, kD);
  FfnWorkspace<float> ws;
  const FfnWeightsView<float> w = dense().view();
  ffn_forward<float>(w, x, y, ws, &pool());  // warm-up: weights made, workspace touched
  for (auto _ : state) {
    ffn_forward<float>(w, x, y, ws, &pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 6.0 * kD * kDh * tokens, 3.0 * kD * kDh * sizeof(float));
}

void bm_moe(benchmark::State& state, int n, int k, Index tokens) {
  const MoELayer<float>& l = layer(n, k);
  const auto x = input(tokens);
  RowMatrix<float> y(tokens, kD);
  MoEWorkspace<float> ws;
  ws.reserve(l, tokens);
  RoutingRecord<float> rec;
  l.forward(x, y, ws, &pool(), &rec);  // warm-up, and the routing: which experts are touched
  Index touched = 0;
  for (Index c : rec.tokens_per_expert) touched += c > 0;
  const Index m = kDh / n;
  for (auto _ : state) {
    l.forward(x, y, ws, &pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 6.0 * kD * m * k * tokens, 3.0 * kD * m * touched * sizeof(float));
  state.counters["experts_touched"] = static_cast<double>(touched);
}

void bm_all_experts(benchmark::State& state, int n, int k, Index tokens) {
  const MoELayer<float>& l = layer(n, k);
  const auto x = input(tokens);
  RowMatrix<float> logits(tokens, n), all(tokens, n * kD), y(tokens, kD), ye(tokens, kD);
  IdMatrix ids(tokens, k);
  RowMatrix<float> w(tokens, k);
  FfnWorkspace<float> ws;
  const Index m = kDh / n;
  auto run = [&] {
    router_logits<float>(x, l.router_weight(), logits);
    route_top_k<float>(logits, k, TopKWeights::kSoftmax, ids, w);
    for (int e = 0; e < n; ++e) {
      ffn_forward<float>(l.expert(e), x, ye, ws, &pool());
      all.middleCols(e * kD, kD) = ye;
    }
    aggregate_top_k<float>(all, ids, w, y);
    apply_scale<float>(y, l.scale());
  };
  run();  // warm-up
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 6.0 * kD * m * n * tokens, 3.0 * kD * kDh * sizeof(float));
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const std::string shape = "d:" + std::to_string(kD) + "/dh:" + std::to_string(kDh);
  for (Index t : kTokens) {
    const std::string ts = "/T:" + std::to_string(t);
    benchmark::RegisterBenchmark(("dense/" + shape + ts).c_str(), bm_dense, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    for (auto [n, k] : {std::pair<int, int>{8, 2}, {16, 4}}) {
      const std::string nk = "/N:" + std::to_string(n) + "/k:" + std::to_string(k);
      benchmark::RegisterBenchmark(("moe/" + shape + nk + ts).c_str(), bm_moe, n, k, t)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("moe_all_experts/" + shape + nk + ts).c_str(), bm_all_experts, n, k, t)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  benchmark::AddCustomContext("threads", std::to_string(pool().size()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
