// moe_bench — what a sparse MoE FFN buys over the dense FFN it was split from, and how close each
// gets to the machine's limits.
//
// Shapes: the LLaMA-2-7B FFN (d = 4096, d_h = 11008) dense and split LLaMA-MoE style into N = 8
// (top-2) and N = 16 (top-4) experts, and the Mixtral expert shape (d = 4096, m = 14336, N = 8,
// top-2). For T tokens per call:
//   StreamRead                        this machine's read bandwidth with the same thread pool
//   dense/d:D/dh:H/T:T                ffn_forward of the dense FFN                    (formula 1)
//   moe/d:D/dh:H/N:N/k:K/T:T          MoELayer::forward: router, dispatch, routed experts, combine
//   moe/d:D/m:M/N:N/k:K/T:T           the same with N experts of width M (Mixtral)
//   moe_all_experts/...               the NumPy reference's way: every expert on every token
//   .../w:bf16                        dense and N = 8 MoE with bfloat16 weights (float math)
//   .../cold                          dense and N = 8 MoE at T = 1 and 8, f32 and bf16, with the
//                                     caches emptied of the weights before each call (untimed);
//                                     counter stream_bytes_per_second: that emptying read's rate
// All use one ThreadPool of every core. Counters: bytes_per_second = bytes of the weights the
// call read (the experts it touched) per second; FLOP/s = 2·3·d·m per (token, expert) pair.
//
// The context records the pool's thread count and the CPU (cpu_description), which this project's
// VM has changed under the same name.
// Run (then bench/report.py bench.json prints the tables of bench/RESULTS.md):
//   build/bench/moe_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//     --benchmark_out=bench.json
#include <benchmark/benchmark.h>

#include <unistd.h>  // sysconf

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <moe/moe.hpp>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

using namespace moe;

namespace {

constexpr Index kTokens[] = {1, 8, 64, 512};

ThreadPool& pool() {
  static ThreadPool p;
  return p;
}

/// Uniform with standard deviation sd: as good as Gaussian for timing, and much faster to make.
/// Filled in parallel (fixed chunks, one seed per chunk: the same values for any pool size).
ColMatrix<float> random_matrix(Index rows, Index cols, double sd, std::uint64_t seed) {
  ColMatrix<float> m(rows, cols);
  const double a = sd * std::sqrt(3.0);
  constexpr Index kChunk = 1 << 20;
  parallel_for(&pool(), (m.size() + kChunk - 1) / kChunk, [&](Index c) {
    detail::SplitMix64 rng(seed * 1000003 + static_cast<std::uint64_t>(c));
    for (Index i = c * kChunk; i < std::min(m.size(), (c + 1) * kChunk); ++i)
      m.data()[i] = static_cast<float>(a * (2 * rng.uniform() - 1));
  });
  return m;
}

RowMatrix<float> input(Index tokens, Index d) {
  return RowMatrix<float>(random_matrix(tokens, d, 1.0, 100 + static_cast<std::uint64_t>(tokens)));
}

FfnWeights<float> random_ffn(Index d, Index m, std::uint64_t seed) {
  // sd 0.02, as LLaMA's initialiser; the values only matter for the activations' range.
  return {random_matrix(d, m, 0.02, seed), random_matrix(d, m, 0.02, seed + 1),
          random_matrix(m, d, 0.02, seed + 2)};
}

/// The dense FFN of width dh, weights stored as W (made once per shape, on first use).
template <class W = float>
const FfnWeights<W>& dense(Index d, Index dh) {
  static std::map<std::pair<Index, Index>, std::unique_ptr<FfnWeights<W>>> cache;
  auto& w = cache[{d, dh}];
  if (!w) {
    if constexpr (std::is_same_v<W, float>)
      w = std::make_unique<FfnWeights<W>>(random_ffn(d, dh, 1));
    else
      w = std::make_unique<FfnWeights<W>>(convert_weights<W>(dense<float>(d, dh).view()));
  }
  return *w;
}

/// A MoE layer: `sliced` — the dense FFN of width m split into n experts of m/n neurons (LLaMA-MoE);
/// otherwise n independent experts of width m (Mixtral). Router N(0, 1/d): balanced routing on
/// random inputs, as a trained router aims for. Expert weights stored as W.
template <class W = float>
const MoELayer<float, W>& layer(Index d, Index m, int n, int k, bool sliced) {
  static std::map<std::tuple<Index, Index, int, int, bool>, std::unique_ptr<MoELayer<float, W>>> cache;
  auto& l = cache[{d, m, n, k, sliced}];
  if (!l) {
    std::vector<FfnWeights<W>> experts;
    if constexpr (std::is_same_v<W, float>) {
      if (sliced) {
        experts = slice_experts(dense(d, m).view(), ExpertPartition::independent_random(m, n, 42));
      } else {
        for (int e = 0; e < n; ++e)
          experts.push_back(random_ffn(d, m, 10 + 3 * static_cast<std::uint64_t>(e)));
      }
    } else {
      const MoELayer<float>& f32 = layer<float>(d, m, n, k, sliced);
      for (int e = 0; e < n; ++e) experts.push_back(convert_weights<W>(f32.expert(e)));
    }
    l = std::make_unique<MoELayer<float, W>>(
        std::move(experts), random_matrix(d, n, 1.0 / std::sqrt(double(d)), 7), MoEConfig{k});
  }
  return *l;
}

void set_counters(benchmark::State& state, double flops, double weight_bytes) {
  state.SetBytesProcessed(static_cast<std::int64_t>(weight_bytes) * state.iterations());
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

/// 1 GiB of floats, far larger than the last-level cache: StreamRead's buffer and the cold
/// benchmarks' eviction.
constexpr Index kBigFloats = Index{1} << 28;
const ColMatrix<float>& big_buffer() {
  static const ColMatrix<float> buffer = random_matrix(kBigFloats, 1, 1.0, 3);
  return buffer;
}

/// Sums the first `floats` of big_buffer() in fixed chunks over the pool; returns the sum.
/// (The chunk sums live on the stack: nothing is allocated inside StreamRead's timed loop.)
float read_big_buffer(Index floats) {
  constexpr Index kChunk = Index{1} << 20;
  const Index chunks = floats / kChunk;
  std::array<float, kBigFloats / kChunk> sums{};
  const float* data = big_buffer().data();
  parallel_for(&pool(), chunks, [&](Index c) {
    using detail::FloatLanes;
    constexpr Index L = FloatLanes::kWidth;
    FloatLanes acc[4] = {FloatLanes::zero(), FloatLanes::zero(), FloatLanes::zero(), FloatLanes::zero()};
    const float* p = data + c * kChunk;
    for (Index i = 0; i < kChunk; i += 4 * L)
      for (int a = 0; a < 4; ++a) acc[a].add(FloatLanes::load(p + i + a * L));
    sums[static_cast<std::size_t>(c)] = acc[0].sum() + acc[1].sum() + acc[2].sum() + acc[3].sum();
  });
  float total = 0;
  for (Index c = 0; c < chunks; ++c) total += sums[static_cast<std::size_t>(c)];
  return total;
}

/// The read bandwidth the decode path is measured against: all of big_buffer() per iteration.
void bm_stream_read(benchmark::State& state) {
  big_buffer();  // made here, not in the first timed iteration
  for (auto _ : state) benchmark::DoNotOptimize(read_big_buffer(kBigFloats));
  state.SetBytesProcessed(static_cast<std::int64_t>(kBigFloats * sizeof(float)) * state.iterations());
}

/// Cold benchmarks call this before each timed call: it reads 512 MB with the timer paused, which
/// evicts the layer's weights from every cache, as the other layers of a model do between two
/// calls of this one. (This VM reports a 508 MB L3, the host's; a 68 MB working set re-read runs
/// ~1.3x faster than a 1 GB one here, but 135 MB only ~1.1x: what a core can use is far smaller.)
/// Returns the read's seconds: the cold cases report its rate as `stream_bytes_per_second`, the
/// read bandwidth of the same seconds as the calls, a steadier reference than StreamRead's run
/// minutes earlier (this VM's read bandwidth moves by 2x within an hour: bench/RESULTS.md).
constexpr Index kEvictFloats = Index{1} << 27;
double evict_caches(benchmark::State& state) {
  state.PauseTiming();
  const auto start = std::chrono::steady_clock::now();
  benchmark::DoNotOptimize(read_big_buffer(kEvictFloats));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  state.ResumeTiming();
  return seconds;
}

/// The timed loop of the dense, MoE and every-expert cases: call() per iteration, after evict_caches when
/// cold (then with the counter stream_bytes_per_second); y is the call's output.
template <class Call>
void time_calls(benchmark::State& state, bool cold, const RowMatrix<float>& y, Call call) {
  double evict_seconds = 0;
  for (auto _ : state) {
    if (cold) evict_seconds += evict_caches(state);
    call();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  if (cold)
    state.counters["stream_bytes_per_second"] =
        double(kEvictFloats) * sizeof(float) * double(state.iterations()) / evict_seconds;
}

template <class W>
void bm_dense(benchmark::State& state, Index d, Index dh, Index tokens, bool cold) {
  const auto x = input(tokens, d);
  RowMatrix<float> y(tokens, d);
  FfnWorkspace<float> ws;
  const FfnWeightsView<W> w = dense<W>(d, dh).view();
  ffn_forward<float>(w, x, y, ws, &pool());  // warm-up: workspace touched
  time_calls(state, cold, y, [&] { ffn_forward<float>(w, x, y, ws, &pool()); });
  set_counters(state, 6.0 * double(d) * double(dh) * double(tokens),
               3.0 * double(d) * double(dh) * sizeof(W));
}

/// The sliced f32 layer's experts copied into one buffer 8 bytes past a 64-byte boundary and run
/// through views, as a zero-copy safetensors checkpoint holds them (its tensors are 8-byte aligned:
/// the tiny Llama fixture's at 56 mod 64). Same router, so the same routing as layer<float>().
const MoELayer<float>& unaligned_layer(Index d, Index m, int n, int k) {
  static std::vector<float> buffer;
  static std::unique_ptr<MoELayer<float>> l;
  if (!l) {
    const MoELayer<float>& owned = layer<float>(d, m, n, k, true);
    Index floats = 0;
    for (int e = 0; e < n; ++e) floats += 3 * d * owned.expert(e).hidden_dim();
    buffer.assign(static_cast<std::size_t>(floats + 32), 0.0f);
    const auto misalignment = reinterpret_cast<std::uintptr_t>(buffer.data()) % 64 / sizeof(float);
    float* p = buffer.data() + (16 - misalignment) % 16 + 2;  // 64-byte aligned + 8 bytes
    std::vector<FfnWeightsView<float>> views;
    for (int e = 0; e < n; ++e) {
      const FfnWeightsView<float>& w = owned.expert(e);
      const Index size = d * w.hidden_dim();
      float *gate = p, *up = p + size, *down = p + 2 * size;
      std::copy_n(w.gate.data(), size, gate);
      std::copy_n(w.up.data(), size, up);
      std::copy_n(w.down.data(), size, down);
      views.emplace_back(gate, up, down, d, w.hidden_dim());
      p += 3 * size;
    }
    l = std::make_unique<MoELayer<float>>(std::move(views), owned.router_weight(), MoEConfig{k});
  }
  return *l;
}

template <class W>
void bm_moe(benchmark::State& state, Index d, Index m, int n, int k, bool sliced, Index tokens, bool cold,
            bool unaligned) {
  const MoELayer<float, W>& l = [&]() -> const MoELayer<float, W>& {
    if constexpr (std::is_same_v<W, float>)
      if (unaligned) return unaligned_layer(d, m, n, k);
    return layer<W>(d, m, n, k, sliced);
  }();
  const auto x = input(tokens, d);
  RowMatrix<float> y(tokens, d);
  MoEWorkspace<float> ws;
  ws.reserve(l, tokens);
  RoutingRecord<float> rec;
  l.forward(x, y, ws, &pool(), &rec);  // warm-up, and the routing: which experts are touched
  double touched_bytes = 0;
  int touched = 0;
  for (int e = 0; e < n; ++e)
    if (rec.tokens_per_expert[static_cast<std::size_t>(e)] > 0) {
      touched_bytes += 3.0 * double(d) * double(l.expert(e).hidden_dim()) * sizeof(W);
      ++touched;
    }
  const double expert_m = double(l.expert(0).hidden_dim());
  time_calls(state, cold, y, [&] { l.forward(x, y, ws, &pool()); });
  set_counters(state, 6.0 * double(d) * expert_m * k * double(tokens), touched_bytes);
  state.counters["experts_touched"] = touched;
}

void bm_all_experts(benchmark::State& state, Index d, Index dh, int n, int k, Index tokens) {
  const MoELayer<float>& l = layer(d, dh, n, k, true);
  const auto x = input(tokens, d);
  RowMatrix<float> logits(tokens, n), all(tokens, n * d), y(tokens, d), ye(tokens, d);
  IdMatrix ids(tokens, k);
  RowMatrix<float> w(tokens, k);
  FfnWorkspace<float> ws;
  auto run = [&] {
    router_logits<float>(x, l.router_weight(), logits);
    route_top_k<float>(logits, k, TopKWeights::kSoftmax, ids, w);
    for (int e = 0; e < n; ++e) {
      ffn_forward<float>(l.expert(e), x, ye, ws, &pool());
      all.middleCols(e * d, d) = ye;
    }
    aggregate_top_k<float>(all, ids, w, y);
    apply_scale<float>(y, l.scale());
  };
  run();  // warm-up
  time_calls(state, false, y, run);
  set_counters(state, 6.0 * double(d) * double(dh) * double(tokens),
               3.0 * double(d) * double(dh) * sizeof(float));
}

/// The CPU as "brand, vendor family F model M (microarchitecture)", for the benchmark's context.
/// This project's VM has run on Zen 4 and on Zen 5 hosts under the same name ("AMD EPYC"); Zen 4
/// issues 512-bit FMAs and vdpbf16ps at half Zen 5's rate, so every figure must say which.
std::string cpu_description() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned r[4] = {};
  if (!__get_cpuid(0, &r[0], &r[1], &r[2], &r[3])) return "unknown x86";
  char vendor[13] = {};
  std::memcpy(vendor, &r[1], 4);  // the vendor string is in ebx, edx, ecx
  std::memcpy(vendor + 4, &r[3], 4);
  std::memcpy(vendor + 8, &r[2], 4);
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __get_cpuid(1, &eax, &ebx, &ecx, &edx);
  const unsigned base_family = (eax >> 8) & 0xF, base_model = (eax >> 4) & 0xF;
  const unsigned family = base_family == 0xF ? base_family + ((eax >> 20) & 0xFF) : base_family;
  const unsigned model =
      base_family == 0x6 || base_family == 0xF ? base_model | (((eax >> 16) & 0xF) << 4) : base_model;
  std::string brand;
  if (__get_cpuid(0x80000004, &r[0], &r[1], &r[2], &r[3])) {
    char text[49] = {};
    for (unsigned leaf = 0; leaf < 3; ++leaf) {
      __get_cpuid(0x80000002 + leaf, &r[0], &r[1], &r[2], &r[3]);
      std::memcpy(text + 16 * leaf, r, 16);
    }
    brand = text;
    brand.erase(brand.find_last_not_of(' ') + 1);
    brand.erase(0, brand.find_first_not_of(' '));
  }
  // AMD's families by the models AMD documents (Zen 4: 0x10-0x1F Genoa, 0x60-0x7F client,
  // 0xA0-0xAF Bergamo; the rest of 0x19 is Zen 3).
  std::string uarch;
  if (std::string(vendor) == "AuthenticAMD") {
    if (family == 0x17) uarch = "Zen / Zen 2";
    if (family == 0x19)
      uarch = (model >= 0x10 && model <= 0x1F) || (model >= 0x60 && model <= 0x7F) ||
                      (model >= 0xA0 && model <= 0xAF)
                  ? "Zen 4"
                  : "Zen 3";
    if (family == 0x1A) uarch = "Zen 5";
  }
  std::ostringstream out;
  out << (brand.empty() ? "" : brand + ", ") << vendor << " family " << family << " model " << model;
  if (!uarch.empty()) out << " (" << uarch << ")";
  return out.str();
#else
  return "not x86";
#endif
}

/// L1 data cache size in KiB, or "" when unknown. Google Benchmark's context lists the caches it
/// finds under /sys/devices/system/cpu, which this project's VM does not have; glibc's sysconf
/// asks CPUID on x86.
std::string l1d_kib() {
#ifdef _SC_LEVEL1_DCACHE_SIZE
  const long bytes = sysconf(_SC_LEVEL1_DCACHE_SIZE);
  if (bytes > 0) return std::to_string(bytes / 1024);
#endif
  return "";
}

template <class F, class... Args>
void add(const std::string& name, F f, Args... args) {
  benchmark::RegisterBenchmark(name.c_str(), f, args...)->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RegisterBenchmark("StreamRead", bm_stream_read)->UseRealTime()->Unit(benchmark::kMillisecond);
  constexpr Index d = 4096, dh = 11008, mixtral_m = 14336;
  const auto s = [](auto v) { return std::to_string(v); };
  const std::string llama = "d:" + s(d) + "/dh:" + s(dh);
  // Each cold case right after its warm one, so their ratio comes from the same minute.
  constexpr Index kMaxColdTokens = 8;
  for (Index t : kTokens) {
    const std::string ts = "/T:" + s(t);
    add("dense/" + llama + ts, bm_dense<float>, d, dh, t, false);
    if (t <= kMaxColdTokens) add("dense/" + llama + ts + "/cold", bm_dense<float>, d, dh, t, true);
    for (auto [n, k] : {std::pair<int, int>{8, 2}, {16, 4}}) {
      const std::string nk = "/N:" + s(n) + "/k:" + s(k);
      add("moe/" + llama + nk + ts, bm_moe<float>, d, dh, n, k, true, t, false, false);
      if (n == 8 && t <= kMaxColdTokens) {
        add("moe/" + llama + nk + ts + "/cold", bm_moe<float>, d, dh, n, k, true, t, true, false);
        add("moe/" + llama + nk + ts + "/unaligned", bm_moe<float>, d, dh, n, k, true, t, false, true);
      }
      add("moe_all_experts/" + llama + nk + ts, bm_all_experts, d, dh, n, k, t);
    }
    add("moe/d:" + s(d) + "/m:" + s(mixtral_m) + "/N:8/k:2" + ts, bm_moe<float>, d, mixtral_m, 8, 2, false, t,
        false, false);
  }
  for (Index t : kTokens) {  // the same with bf16 weights (float activations, float accumulation)
    using BF16 = Eigen::bfloat16;
    const std::string ts = "/T:" + s(t), moe8 = "moe/" + llama + "/N:8/k:2" + ts;
    add("dense/" + llama + ts + "/w:bf16", bm_dense<BF16>, d, dh, t, false);
    if (t <= kMaxColdTokens) add("dense/" + llama + ts + "/w:bf16/cold", bm_dense<BF16>, d, dh, t, true);
    add(moe8 + "/w:bf16", bm_moe<BF16>, d, dh, 8, 2, true, t, false, false);
    if (t <= kMaxColdTokens) add(moe8 + "/w:bf16/cold", bm_moe<BF16>, d, dh, 8, 2, true, t, true, false);
  }
  benchmark::AddCustomContext("threads", std::to_string(pool().size()));
  benchmark::AddCustomContext("cpu", cpu_description());
  if (const std::string l1d = l1d_kib(); !l1d.empty()) benchmark::AddCustomContext("l1d_kib", l1d);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
