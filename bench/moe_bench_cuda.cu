// moe_bench_cuda — the CUDA MoE layer (moe/cuda/moe_layer.cuh) on this machine's GPU.
//
// Shapes: LLaMA-MoE-3.5B (d = 4096, m = 1376, N = 8, k = 2) and, for comparison, the dense
// LLaMA-2-7B FFN run as one expert (m = 11008, N = 1, k = 1), expert weights bf16 (and f32 with
// --weights both), for T tokens per forward. --tiles 64 makes bf16 layers take the 64-row
// tensor-core tiles (expert_mma.cuh) instead of the pipelined 128-row ones, --tiles wgmma the
// pipelined tiles' wgmma form (expert_mma_wgmma.cuh, H100/H200), and --few-rows R sends
// experts with more than R rows (default 16) to the tiles, to time where the matrix-vector and the
// tile kernels should meet. --no-overlap launches a forward's kernels the plain way, without
// programmatic dependent launch (DeviceMoELayer::set_overlap_launches), to time what it gains.
//
// Timing: each forward is captured in a CUDA graph and replayed; CUDA events around a batch of
// replays, the median of the batches' per-forward times. The replays rotate over 8 different inputs
// (8 graphs), so consecutive forwards route to different experts and the experts' weights (270 MB
// in bf16 at N = 8; 34 MB an expert) are not served from the 50-60 MB L2 cache, as one input's
// two experts could partly be.
//
// Reports per shape and T: µs per forward, GB/s of the weights of the experts that forward touched
// (bytes of every expert with a token, averaged over the inputs), TFLOP/s (2·3·d·m per routed
// token-expert pair). A plain program, not Google Benchmark, so the binary needs nothing but the
// CUDA driver on the GPU machine. Without a GPU it says so and exits 77.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <moe/core/detail/rng.hpp>
#include <moe/cuda/moe_layer.cuh>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace moe;

namespace {

/// Uniform with standard deviation sd, filled by all host threads in fixed chunks (the same values
/// for any thread count).
ColMatrix<float> random_matrix(Index rows, Index cols, double sd, std::uint64_t seed) {
  ColMatrix<float> m(rows, cols);
  const double a = sd * std::sqrt(3.0);
  constexpr Index kChunk = 1 << 20;
  const Index chunks = (m.size() + kChunk - 1) / kChunk;
  std::vector<std::thread> threads;
  const unsigned workers = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      for (Index c = w; c < chunks; c += workers) {
        detail::SplitMix64 rng(seed * 1000003 + static_cast<std::uint64_t>(c));
        for (Index i = c * kChunk; i < std::min(m.size(), (c + 1) * kChunk); ++i)
          m.data()[i] = static_cast<float>(a * (2 * rng.uniform() - 1));
      }
    });
  for (auto& t : threads) t.join();
  return m;
}

template <class W>
MoELayer<float, W> make_layer(Index d, Index m, int n, int k) {
  std::vector<FfnWeights<W>> experts;
  for (int e = 0; e < n; ++e) {
    const auto s = 10 + 3 * static_cast<std::uint64_t>(e);
    FfnWeights<float> f{random_matrix(d, m, 0.02, s), random_matrix(d, m, 0.02, s + 1),
                        random_matrix(m, d, 0.02, s + 2)};
    if constexpr (std::is_same_v<W, float>)
      experts.push_back(std::move(f));
    else
      experts.push_back(convert_weights<W>(f.view()));
  }
  return MoELayer<float, W>(std::move(experts), random_matrix(d, n, 1.0 / std::sqrt(double(d)), 7),
                            MoEConfig{k});
}

struct Result {
  std::string name;
  Index tokens;
  double us, gbps, tflops;
};

template <class W>
void run_shape(const std::string& name, Index d, Index m, int n, int k,
               const std::vector<Index>& token_counts, int batches, cuda::TileKernels tiles, int few_rows,
               bool overlap, std::vector<Result>& out) {
  const MoELayer<float, W> layer = make_layer<W>(d, m, n, k);
  cuda::DeviceMoELayer<W> gpu(layer);
  gpu.set_tile_kernels(tiles);
  gpu.set_few_rows(few_rows);
  if (!overlap) gpu.set_overlap_launches(false);
  const Index max_t = *std::max_element(token_counts.begin(), token_counts.end());
  gpu.reserve(max_t);
  constexpr int kInputs = 8;
  std::vector<cuda::DeviceBuffer<float>> xs(kInputs);
  for (int i = 0; i < kInputs; ++i) {
    const ColMatrix<float> x = random_matrix(d, max_t, 1.0, 100 + static_cast<std::uint64_t>(i));  // x^T
    xs[static_cast<std::size_t>(i)].upload(x.data(), static_cast<std::size_t>(x.size()));
  }
  cuda::DeviceBuffer<float> y(static_cast<std::size_t>(max_t * d));
  cudaStream_t stream{};
  MOE_CUDA_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start{}, stop{};
  MOE_CUDA_CHECK(cudaEventCreate(&start));
  MOE_CUDA_CHECK(cudaEventCreate(&stop));

  for (Index t : token_counts) {
    // Bytes touched: every expert with a token, per input (the routing of each).
    double bytes = 0;
    std::vector<cudaGraphExec_t> graphs(kInputs);
    for (int i = 0; i < kInputs; ++i) {
      gpu.forward(xs[static_cast<std::size_t>(i)].data(), y.data(), t, stream);
      IdMatrix ids;
      RowMatrix<float> w;
      std::vector<int> counts;
      gpu.last_routing(t, ids, w, counts, stream);
      for (int e = 0; e < n; ++e)
        if (counts[static_cast<std::size_t>(e)] > 0)
          bytes += 3.0 * double(d) * double(m) * sizeof(W) / kInputs;
      cudaGraph_t graph{};
      MOE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      gpu.forward(xs[static_cast<std::size_t>(i)].data(), y.data(), t, stream);
      MOE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
      MOE_CUDA_CHECK(cudaGraphInstantiate(&graphs[static_cast<std::size_t>(i)], graph, 0));
      MOE_CUDA_CHECK(cudaGraphDestroy(graph));
    }
    gpu.check_routing(stream);
    // Milliseconds of `count` replays, rotating over the inputs.
    const auto replay_ms = [&](int count) {
      MOE_CUDA_CHECK(cudaEventRecord(start, stream));
      for (int i = 0; i < count; ++i) MOE_CUDA_CHECK(cudaGraphLaunch(graphs[i % kInputs], stream));
      MOE_CUDA_CHECK(cudaEventRecord(stop, stream));
      MOE_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      return double(ms);
    };
    replay_ms(3 * kInputs);  // warm-up
    // A batch: enough replays for ~2 ms, at least one round over the inputs.
    const double probe_ms = replay_ms(kInputs);
    const int per_batch =
        std::max(kInputs, static_cast<int>(2.0 / std::max(1e-3, probe_ms / kInputs)) / kInputs * kInputs);
    std::vector<double> per_forward_us;
    for (int b = 0; b < batches; ++b) per_forward_us.push_back(1e3 * replay_ms(per_batch) / per_batch);
    for (auto g : graphs) MOE_CUDA_CHECK(cudaGraphExecDestroy(g));
    std::sort(per_forward_us.begin(), per_forward_us.end());
    const double us = per_forward_us[per_forward_us.size() / 2];
    const double flops = 6.0 * double(d) * double(m) * k * double(t);
    out.push_back({name, t, us, bytes / (us * 1e-6) / 1e9, flops / (us * 1e-6) / 1e12});
    std::printf("%-44s T=%-5lld %10.2f us %9.1f GB/s %8.2f TFLOP/s\n", name.c_str(),
                static_cast<long long>(t), us, out.back().gbps, out.back().tflops);
    std::fflush(stdout);
  }
  MOE_CUDA_CHECK(cudaEventDestroy(start));
  MOE_CUDA_CHECK(cudaEventDestroy(stop));
  MOE_CUDA_CHECK(cudaStreamDestroy(stream));
}

std::vector<Index> parse_list(const std::string& s) {
  std::vector<Index> v;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) v.push_back(std::stoll(item));
  MOE_CHECK(!v.empty(), "moe_bench_cuda: empty token list '" << s << "'");
  for (Index t : v) MOE_CHECK(t >= 1, "moe_bench_cuda: token count " << t << " must be >= 1");
  return v;
}

}  // namespace

int main(int argc, char** argv) try {
  std::vector<Index> tokens{1, 16, 64, 256, 2048, 8192};
  std::string weights = "bf16", json, tiles = "auto";
  int batches = 15, few_rows = cuda::kFewRows;
  bool dense = true, overlap = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&] {
      MOE_CHECK(i + 1 < argc, "moe_bench_cuda: " << a << " needs a value");
      return std::string(argv[++i]);
    };
    if (a == "--tokens")
      tokens = parse_list(value());
    else if (a == "--weights")
      weights = value();
    else if (a == "--batches")
      batches = std::stoi(value());
    else if (a == "--json")
      json = value();
    else if (a == "--tiles")
      tiles = value();
    else if (a == "--few-rows")
      few_rows = std::stoi(value());
    else if (a == "--no-dense")
      dense = false;
    else if (a == "--no-overlap")
      overlap = false;
    else {
      std::printf(
          "usage: moe_bench_cuda [--tokens 1,16,64,256,2048,8192] [--weights bf16|f32|both] [--batches 15]\n"
          "                      [--tiles auto|64|wgmma] [--few-rows 0..16] [--no-overlap]\n"
          "                      [--no-dense] [--json FILE]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  MOE_CHECK(weights == "bf16" || weights == "f32" || weights == "both",
            "moe_bench_cuda: --weights is bf16, f32 or both, not '" << weights << "'");
  MOE_CHECK(batches >= 1, "moe_bench_cuda: --batches must be >= 1");
  MOE_CHECK(tiles == "auto" || tiles == "64" || tiles == "wgmma",
            "moe_bench_cuda: --tiles is auto, 64 or wgmma, not '" << tiles << "'");
  const cuda::TileKernels tile_kernels = tiles == "64"      ? cuda::TileKernels::k64
                                         : tiles == "wgmma" ? cuda::TileKernels::kWgmma
                                                            : cuda::TileKernels::kAuto;
  MOE_CHECK(few_rows >= 0 && few_rows <= cuda::kFewRows,
            "moe_bench_cuda: --few-rows is 0.." << cuda::kFewRows << ", not " << few_rows);
  const std::string tag_tiles = std::string(tiles != "auto" ? "/tiles:" + tiles : "") +
                                (few_rows != cuda::kFewRows ? "/few:" + std::to_string(few_rows) : "") +
                                (overlap ? "" : "/no-overlap");
  if (cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop{};
  MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.0f MB L2; medians of %d batches of CUDA-graph replays\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize / 1e6, batches);
  std::vector<Result> results;
  const auto shapes = [&](auto w, const char* tag) {
    using W = decltype(w);
    run_shape<W>(std::string("moe/d:4096/m:1376/N:8/k:2/w:") + tag + tag_tiles, 4096, 1376, 8, 2, tokens,
                 batches, tile_kernels, few_rows, overlap, results);
    if (dense)
      run_shape<W>(std::string("dense/d:4096/dh:11008/w:") + tag + tag_tiles, 4096, 11008, 1, 1, tokens,
                   batches, tile_kernels, few_rows, overlap, results);
  };
  if (weights != "f32") shapes(Eigen::bfloat16{}, "bf16");
  if (weights != "bf16") shapes(float{}, "f32");
  if (!json.empty()) {
    std::ofstream f(json);
    f << "{\"device\": \"" << prop.name << "\", \"results\": [\n";
    for (std::size_t i = 0; i < results.size(); ++i)
      f << "  {\"name\": \"" << results[i].name << "\", \"T\": " << results[i].tokens
        << ", \"us\": " << results[i].us << ", \"GBps\": " << results[i].gbps
        << ", \"TFLOPs\": " << results[i].tflops << "}" << (i + 1 < results.size() ? ",\n" : "\n");
    f << "]}\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "moe_bench_cuda: %s\n", e.what());
  return 1;
}
