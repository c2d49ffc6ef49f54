// The CUDA MoE layer against the CPU layer. Needs a GPU: without one it prints SKIPPED and exits
// 77, which CTest reports as skipped.
//
// Tolerances: float weights, and bf16/fp16 weights on the matrix-vector path (experts with at most
// cuda::kFewRows rows), are widened exactly and every product is accumulated in float on both
// sides, in different orders, so the outputs agree to float rounding over dot products of d and m
// terms (the project's 1e-5, relative to the output's scale). bf16 and fp16 weights on the tile path
// run on the tensor cores, which round the activations (x, then h) to the weights' type (unit
// roundoff u = 2^-9 for bf16, 2^-11 for fp16), as the CPU path's AVX512-BF16 kernels do for bf16;
// the CPU layer here keeps them in float, so those outputs are compared within 4u, the bound the
// CPU's bf16 pair products are held to against float activations (test_moe_layer, measured 2.3u
// there; the same two roundings per product give the same bound in fp16's u). The router's logits agree to
// 1e-5 too; its weights come from expf on each side (CUDA's expf is within 2 ulp and glibc's
// within 1, and each side's sum and division round once more: a few ulp, 2e-6). Expert choices
// are compared exactly given the same logits: two logits a rounding apart can legitimately order
// differently when each side computes its own.
#define CATCH_CONFIG_RUNNER
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <moe/cuda/moe_layer.cuh>

#include "cuda_test_util.hpp"

using namespace moe;
using Catch::Contains;

int main(int argc, char** argv) {
  if (cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device (the CUDA layer's tests need a GPU)\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}

namespace {

/// Whether the layer comparisons also run the wgmma tiles: where the GPU and build have them,
/// unless MOE_TEST_SKIP_WGMMA is set (cuda_device_check.sh reruns the suite with it if a first run
/// fails: a fault in those kernels would end the process's CUDA context, and every test after
/// it, before the other kernels were checked).
bool compare_wgmma() {
  static const bool yes = cuda::wgmma_available() && !std::getenv("MOE_TEST_SKIP_WGMMA");
  return yes;
}

RowMatrix<float> input(Index tokens, Index d, std::uint64_t seed) {
  return testutil::random_matrix<RowMatrix<float>>(tokens, d, seed);
}

/// The GPU forward of x, its routing, and the CPU layer's forward_routed on that same routing.
/// few_rows: DeviceMoELayer::set_few_rows.
template <class W>
void check_layer(const MoELayer<float, W>& layer, Index tokens, std::uint64_t seed,
                 int few_rows = cuda::kFewRows) {
  INFO("N=" << layer.num_experts() << " k=" << layer.top_k() << " d=" << layer.model_dim() << " T=" << tokens
            << " few_rows=" << few_rows);
  cuda::DeviceMoELayer<W> gpu(layer);
  gpu.set_few_rows(few_rows);
  const RowMatrix<float> x = input(tokens, layer.model_dim(), seed);
  RowMatrix<float> y(tokens, layer.model_dim()), again(tokens, layer.model_dim());
  gpu.forward(x, y);
  IdMatrix ids;
  RowMatrix<float> weights, logits;
  std::vector<int> counts;
  gpu.last_routing(tokens, ids, weights, counts);
  gpu.last_logits(tokens, logits);

  // Routing: the logits as the CPU computes them; the CPU router on the GPU's logits chooses the
  // same experts with the same weights; the counts are the histogram of the ids.
  RowMatrix<float> cpu_logits(tokens, layer.num_experts());
  router_logits<float>(x, layer.router_weight(), cpu_logits);
  CHECK(testutil::rel_err(logits, cpu_logits) <= 1e-5);
  IdMatrix cpu_ids(tokens, layer.top_k());
  RowMatrix<float> cpu_weights(tokens, layer.top_k());
  RouterScratch<float> scratch;
  route<float>(layer.config().router, logits, nullptr, layer.top_k(), cpu_ids, cpu_weights, scratch);
  CHECK(ids == cpu_ids);
  CHECK(testutil::rel_err(weights, cpu_weights) <= 2e-6);
  std::vector<int> histogram(static_cast<std::size_t>(layer.num_experts()), 0);
  for (Index i = 0; i < ids.size(); ++i) ++histogram[static_cast<std::size_t>(ids.data()[i])];
  CHECK(counts == histogram);

  // The layer: the CPU's forward on the GPU's routing.
  RowMatrix<float> cpu_y(tokens, layer.model_dim());
  MoEWorkspace<float> ws;
  layer.forward_routed(x, ids, weights, cpu_y, ws);
  const bool tensor_cores = !std::is_same_v<W, float> &&
                            std::any_of(counts.begin(), counts.end(), [&](int c) { return c > few_rows; });
  const double u = std::is_same_v<W, Eigen::bfloat16> ? 0x1p-9 : 0x1p-11;
  CHECK(testutil::rel_err(y, cpu_y) <= (tensor_cores ? 4 * u : 1e-5));

  // The same input, the same bits; on the emulator, under its reverse schedule (blocks and warps
  // last to first, warps running ahead), so that a race that changes any bit fails here.
  {
    const cudatest::ReversedSchedule reversed;
    gpu.forward(x, again);
  }
  CHECK(testutil::bitwise_equal(y, again));

  // Where the pipelined 128-row tiles ran, the 64-row tiles on the same input: the same rounded
  // operands, summed in the same 16-deep steps in k order. In the emulator (mma_sync sums each
  // step in k order in float) that is the same bits; on a GPU the two kernels issue the same
  // tensor-core instructions in the same k order, but nothing documents the bits, so there they are
  // held to the bound above against each other.
  // The same for the pipelined tiles' wgmma form, where this GPU and build have it (the emulator
  // does), which must also give the same bits again under the reverse schedule.
  if (tensor_cores && gpu.pipelined_tiles()) {
    const auto same_products = [&](const RowMatrix<float>& other) {
#if defined(MOE_CUDA_EMULATION)
      CHECK(testutil::bitwise_equal(y, other));
#else
      CHECK(testutil::rel_err(other, y) <= 4 * u);
#endif
    };
    gpu.set_tile_kernels(cuda::TileKernels::k64);
    RowMatrix<float> tiles64(tokens, layer.model_dim());
    gpu.forward(x, tiles64);
    same_products(tiles64);
    if (compare_wgmma()) {
      gpu.set_tile_kernels(cuda::TileKernels::kWgmma);
      RowMatrix<float> wgmma(tokens, layer.model_dim());
      gpu.forward(x, wgmma);
      same_products(wgmma);
      const cudatest::ReversedSchedule reversed;
      gpu.forward(x, again);
      CHECK(testutil::bitwise_equal(wgmma, again));
    }
  }
}

/// Code written once against MoELayer's backend overload (CpuBackend or cuda::DeviceMoELayer).
template <class Backend>
RowMatrix<float> forward_on(const MoELayer<float>& layer, const RowMatrix<float>& x, Backend& backend) {
  RowMatrix<float> y(x.rows(), x.cols());
  layer.forward(x, y, backend);
  return y;
}

}  // namespace

TEST_CASE("CUDA layer: N=8 k=2 at T = 1, 7, 64, 4096 (float weights)", "[cuda]") {
  const auto layer = cudatest::random_layer(256, 96, 8, 2, 11);
  for (Index t : {1, 7, 64, 4096}) check_layer(layer, t, 100 + static_cast<std::uint64_t>(t));
}

TEST_CASE("CUDA layer: d and m not multiples of the tiles or of the 16-byte vectors", "[cuda]") {
  // d = 202, m = 70: partial 64-row/column tiles and 16-deep steps, and the matrix-vector path's
  // scalar loop (neither is a multiple of 4 floats); T = 37 mixes experts on both paths.
  check_layer(cudatest::random_layer(202, 70, 8, 2, 12), 37, 7);
  check_layer(cudatest::random_layer(202, 70, 8, 2, 12), 300, 8);
  // d = 200, m = 72 with bf16 weights: vectors of 8 (16 bytes) fit d and m exactly; at T = 300
  // the pipelined tensor-core tiles (and the 64-row ones, compared with them) are partial in rows,
  // columns and depth (200 = 6 stages of 32 and 8 more; 72 = 2 stages and 8).
  check_layer(cudatest::random_layer<Eigen::bfloat16>(200, 72, 8, 2, 12), 37, 9);
  check_layer(cudatest::random_layer<Eigen::bfloat16>(200, 72, 8, 2, 12), 300, 10);
  // The 64-row tensor-core tiles' one-value-at-a-time loads: d = 200, m = 70 (the down product's
  // weight columns are not whole 16-byte vectors), and fp16 at d = 202, m = 70 (neither product's).
  check_layer(cudatest::random_layer<Eigen::bfloat16>(200, 70, 8, 2, 12), 300, 11);
  check_layer(cudatest::random_layer<Eigen::half>(202, 70, 8, 2, 12), 300, 12);
}

TEST_CASE("CUDA layer: the pipelined tiles take bf16/fp16 weights where d and every m_e are multiples of 8",
          "[cuda]") {
  using Bf16 = Eigen::bfloat16;
  CHECK(cuda::DeviceMoELayer<Bf16>(cudatest::random_layer<Bf16>(200, 72, 4, 2, 21)).pipelined_tiles());
  CHECK(cuda::DeviceMoELayer<Eigen::half>(cudatest::random_layer<Eigen::half>(64, 32, 4, 2, 21))
            .pipelined_tiles());
  CHECK_FALSE(cuda::DeviceMoELayer<Bf16>(cudatest::random_layer<Bf16>(200, 70, 4, 2, 21)).pipelined_tiles());
  CHECK_FALSE(cuda::DeviceMoELayer<Bf16>(cudatest::random_layer<Bf16>(202, 72, 4, 2, 21)).pipelined_tiles());
  CHECK_FALSE(cuda::DeviceMoELayer<float>(cudatest::random_layer(64, 32, 4, 2, 21)).pipelined_tiles());
  cuda::DeviceMoELayer<Bf16> gpu(cudatest::random_layer<Bf16>(64, 32, 4, 2, 21));
  gpu.set_tile_kernels(cuda::TileKernels::k64);
  CHECK_FALSE(gpu.pipelined_tiles());
  gpu.set_tile_kernels(cuda::TileKernels::kAuto);
  CHECK(gpu.pipelined_tiles());
}

TEST_CASE("CUDA layer: TileKernels::kWgmma runs where the GPU has compute capability 9.0, else is refused",
          "[cuda]") {
  // This project's builds have sm_90a code (CMAKE_CUDA_ARCHITECTURES 90a-real by default), so an
  // H100/H200 must have the wgmma kernels; other GPUs refuse them with a message saying why.
  cudaDeviceProp prop{};
  REQUIRE(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  INFO("compute capability " << prop.major << "." << prop.minor);
  using Bf16 = Eigen::bfloat16;
  cuda::DeviceMoELayer<Bf16> gpu(cudatest::random_layer<Bf16>(64, 32, 4, 2, 21));
  if (prop.major == 9 && prop.minor == 0) {
    CHECK(cuda::wgmma_available());
    gpu.set_tile_kernels(cuda::TileKernels::kWgmma);
    CHECK(gpu.tile_kernels() == cuda::TileKernels::kWgmma);
    CHECK(gpu.pipelined_tiles());
  } else {
    CHECK_FALSE(cuda::wgmma_available());
    CHECK_THROWS_WITH(gpu.set_tile_kernels(cuda::TileKernels::kWgmma), Contains("compute capability 9.0"));
    CHECK(gpu.tile_kernels() == cuda::TileKernels::kAuto);
  }
}

TEST_CASE("CUDA layer: k from 1 to 8 of N = 8, renormalised weights too", "[cuda]") {
  for (int k = 1; k <= 8; ++k) {
    check_layer(cudatest::random_layer(128, 64, 8, k, 13), 64, 8);
    check_layer(cudatest::random_layer(128, 64, 8, k, 14, MoEConfig{k, TopKWeights::kRenormalized}), 33, 9);
  }
}

TEST_CASE("CUDA layer: N = 256, k = 8, most experts empty at T = 7", "[cuda]") {
  const auto layer = cudatest::random_layer(128, 16, 256, 8, 15);
  check_layer(layer, 7, 10);
  check_layer(layer, 300, 11);
}

TEST_CASE("CUDA layer: the router's partial passes and the matrix-vector row bounds: N = 13, 1 to 17 tokens",
          "[cuda]") {
  // route_tokens takes 8 experts a pass: here a last pass of 5 experts; blocks of one token (T = 1,
  // 3), of 8 and 1 (T = 9), of 8, 8 and 1 (T = 17); chunks of 4 floats (d = 200) or of 1 (d = 202).
  // And the matrix-vector kernels for experts of at most 1 row (T = 1), 4 (T = 3) and 16 rows.
  for (Index d : {200, 202}) {
    const auto layer = cudatest::random_layer(d, 40, 13, 3, 31);
    for (Index t : {1, 3, 9, 17}) check_layer(layer, t, 200 + static_cast<std::uint64_t>(t));
  }
  // x and y not 16-byte aligned (d = 200 would allow float4 chunks): the router's and the
  // combine's scalar chunks, the same logits to the CPU's rounding, so the same routing and the
  // same output to float rounding.
  const auto layer = cudatest::random_layer(200, 40, 13, 3, 32);
  constexpr Index kTokens = 9;
  const RowMatrix<float> x = input(kTokens, 200, 33);
  cuda::DeviceMoELayer<float> gpu(layer, kTokens);
  RowMatrix<float> aligned(kTokens, 200), shifted(kTokens, 200), logits, cpu_logits(kTokens, 13);
  gpu.forward(x, aligned);
  std::vector<float> x_shifted(static_cast<std::size_t>(x.size()) + 1);
  std::copy(x.data(), x.data() + x.size(), x_shifted.begin() + 1);
  cuda::DeviceBuffer<float> xd, yd;
  xd.upload(x_shifted.data(), x_shifted.size());
  yd.reserve(static_cast<std::size_t>(x.size()) + 1);
  gpu.forward(xd.data() + 1, yd.data() + 1, kTokens);
  MOE_CUDA_CHECK(cudaMemcpy(shifted.data(), yd.data() + 1, sizeof(float) * static_cast<std::size_t>(x.size()),
                            cudaMemcpyDeviceToHost));
  gpu.last_logits(kTokens, logits);
  router_logits<float>(x, layer.router_weight(), cpu_logits);
  CHECK(testutil::rel_err(logits, cpu_logits) <= 1e-5);
  CHECK(testutil::rel_err(shifted, aligned) <= 1e-5);
}

TEST_CASE("CUDA layer: a token's logits, and its output on the matrix-vector path, do not depend on T",
          "[cuda]") {
  // Below 8 tokens route_tokens gives each token a block and loads 4 of a thread's chunks before it
  // multiplies; from 8 on, 8 tokens a block and one chunk. Each thread sums the same chunks in the
  // same order either way, so a token's logits are the same bits at any T. d = 2100 (525 chunks of
  // 4): a thread's 2nd and a partial 3rd of its 4 chunks; d = 1030 (scalar chunks): all 4, then a
  // second step for a few threads.
  // The matrix-vector kernels' rows and the combine are per-row sums too: with every expert at
  // most kFewRows rows, the output is the same bits as well.
  for (Index d : {2100, 1030}) {
    INFO("d=" << d);
    const auto layer = cudatest::random_layer(d, 40, 8, 2, 34);
    const RowMatrix<float> x = input(17, d, 35);
    cuda::DeviceMoELayer<float> gpu(layer, 17);
    RowMatrix<float> all_y(17, d), all_logits;
    gpu.forward(x, all_y);
    gpu.last_logits(17, all_logits);
    IdMatrix ids;
    RowMatrix<float> weights;
    std::vector<int> counts;
    gpu.last_routing(17, ids, weights, counts);
    REQUIRE(*std::max_element(counts.begin(), counts.end()) <= cuda::kFewRows);  // no tiles at T = 17
    for (Index t : {1, 3, 7, 9}) {
      INFO("T=" << t);
      RowMatrix<float> y(t, d), logits;
      gpu.forward(x.topRows(t), y);
      gpu.last_logits(t, logits);
      CHECK(testutil::bitwise_equal(logits, all_logits.topRows(t)));
      CHECK(testutil::bitwise_equal(y, all_y.topRows(t)));
    }
  }
  // The rounded copy of x the tile kernels read, written by the one-token blocks over a thread's
  // first and a partial second chunk (d = 1056: 264 chunks of 4), with every expert on the tiles.
  const auto bf16 = cudatest::random_layer<Eigen::bfloat16>(1056, 40, 13, 3, 36);
  for (Index t : {1, 3}) check_layer(bf16, t, 37 + static_cast<std::uint64_t>(t), 0);
}

TEST_CASE("CUDA layer: every token on one expert (a zero router: all logits tie, lowest index wins)",
          "[cuda]") {
  std::vector<FfnWeights<float>> experts;
  for (int e = 0; e < 4; ++e) experts.push_back(testutil::random_ffn<float>(64, 32, 20 + 3 * e, 0.05));
  const MoELayer<float> layer(std::move(experts), ColMatrix<float>::Zero(64, 4), MoEConfig{1});
  check_layer(layer, 4096, 12);
  // kFewRows pairs on one expert: the matrix-vector path, and the tile kernels are not launched;
  // one more: the tile path.
  check_layer(layer, cuda::kFewRows, 13);
  check_layer(layer, cuda::kFewRows + 1, 14);
}

TEST_CASE("CUDA layer: every token on one bf16 expert: whole and partial 128-row tiles", "[cuda]") {
  std::vector<FfnWeights<Eigen::bfloat16>> experts;
  for (int e = 0; e < 4; ++e)
    experts.push_back(
        convert_weights<Eigen::bfloat16>(testutil::random_ffn<float>(64, 32, 40 + 3 * e, 0.05).view()));
  const MoELayer<float, Eigen::bfloat16> layer(std::move(experts), ColMatrix<float>::Zero(64, 4),
                                               MoEConfig{1});
  // 64 and 65 rows: the wgmma tiles multiply one 64-row half, then both.
  for (Index t : {cuda::kFewRows + 1, cuda::kPipeTileRows / 2, cuda::kPipeTileRows / 2 + 1,
                  cuda::kPipeTileRows, cuda::kPipeTileRows + 1, 3 * cuda::kPipeTileRows})
    check_layer(layer, t, 30 + static_cast<std::uint64_t>(t));
}

TEST_CASE("CUDA layer: set_few_rows moves experts between the matrix-vector and the tile kernels", "[cuda]") {
  // 0: every expert on the tiles, at T = 1 too; 4: experts with 5..16 rows move to the tiles.
  const auto f32 = cudatest::random_layer(128, 64, 8, 2, 22);
  const auto bf16 = cudatest::random_layer<Eigen::bfloat16>(128, 64, 8, 2, 22);
  for (int few_rows : {0, 4}) {
    for (Index t : {1, 7, 64}) {
      check_layer(f32, t, 50 + static_cast<std::uint64_t>(t), few_rows);
      check_layer(bf16, t, 60 + static_cast<std::uint64_t>(t), few_rows);
    }
  }
  cuda::DeviceMoELayer<float> gpu(f32);
  CHECK(gpu.few_rows() == cuda::kFewRows);
  CHECK_THROWS_WITH(gpu.set_few_rows(-1), Contains("set_few_rows(-1)"));
  CHECK_THROWS_WITH(gpu.set_few_rows(cuda::kFewRows + 1), Contains("expected 0..16"));
}

// Three test cases, not one: the emulator's CTest runs each as its own process, and T = 4096 in
// bf16 is most of their time.
TEST_CASE("CUDA layer: bf16 expert weights at T = 1, 7, 64 (tensor cores past kFewRows rows)", "[cuda]") {
  const auto bf16 = cudatest::random_layer<Eigen::bfloat16>(256, 96, 8, 2, 16);
  for (Index t : {1, 7, 64}) check_layer(bf16, t, 13 + static_cast<std::uint64_t>(t));
}

TEST_CASE("CUDA layer: bf16 expert weights at T = 4096", "[cuda]") {
  check_layer(cudatest::random_layer<Eigen::bfloat16>(256, 96, 8, 2, 16), 4096, 13 + 4096);
}

TEST_CASE("CUDA layer: fp16 expert weights at T = 64 and 1000", "[cuda]") {
  const auto fp16 = cudatest::random_layer<Eigen::half>(256, 96, 8, 2, 17);
  check_layer(fp16, 64, 15);
  check_layer(fp16, 1000, 16);
}

TEST_CASE("CUDA layer: a NaN input is reported with its token", "[cuda]") {
  const auto layer = cudatest::random_layer(64, 32, 8, 2, 18);
  cuda::DeviceMoELayer<float> gpu(layer);
  CHECK_NOTHROW(gpu.check_routing());  // before any forward: nothing to report
  RowMatrix<float> x = input(5, 64, 19), y(5, 64);
  x(3, 10) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(gpu.forward(x, y), Contains("token 3"));
  x(1, 0) = std::numeric_limits<float>::infinity();  // two bad tokens: the first is named
  CHECK_THROWS_WITH(gpu.forward(x, y), Contains("token 1"));
  x(3, 10) = x(1, 0) = 0.0f;  // and the next forward is clean again
  CHECK_NOTHROW(gpu.forward(x, y));
}

TEST_CASE("CUDA layer: shapes and the workspace's size are checked", "[cuda]") {
  const auto layer = cudatest::random_layer(64, 32, 8, 2, 20);
  cuda::DeviceMoELayer<float> gpu(layer);
  IdMatrix ids;
  RowMatrix<float> weights;
  std::vector<int> counts;
  CHECK_THROWS_WITH(gpu.last_routing(4, ids, weights, counts), Contains("before any forward"));
  RowMatrix<float> x = input(4, 64, 21), y(4, 63);
  CHECK_THROWS_WITH(gpu.forward(x, y), Contains("expected 4x64"));
  gpu.reserve(4);
  cuda::DeviceBuffer<float> xd(5 * 64), yd(5 * 64);
  CHECK_THROWS_WITH(gpu.forward(xd.data(), yd.data(), 5), Contains("workspace holds 4"));

  // Host matrices with rows further apart than d (blocks of wider ones) give the same bits.
  RowMatrix<float> y_packed(4, 64), x_wide = input(4, 80, 22), y_wide = RowMatrix<float>::Zero(4, 80);
  x = x_wide.leftCols(64);
  gpu.forward(x, y_packed);
  CHECK_THROWS_WITH(gpu.last_logits(5, weights), Contains("the last forward ran 4"));
  gpu.forward(x_wide.leftCols(64), y_wide.leftCols(64));
  CHECK(testutil::bitwise_equal(RowMatrix<float>(y_wide.leftCols(64)), y_packed));
  CHECK(y_wide.rightCols(16).isZero(0));
}

TEST_CASE("CUDA layer: overlapped launches (programmatic dependent launch) give the plain launches' bits",
          "[cuda]") {
  cudaDeviceProp prop{};
  REQUIRE(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  using Bf16 = Eigen::bfloat16;
  // T = 1: the matrix-vector kernels alone (5 kernels); T = 64: both paths, all 7 kernels.
  const auto layer = cudatest::random_layer<Bf16>(256, 96, 8, 2, 26);
  cuda::DeviceMoELayer<Bf16> gpu(layer, 64);
  CHECK(gpu.overlap_launches() == (prop.major >= 9));
  for (Index t : {1, 64}) {
    INFO("T=" << t);
    const RowMatrix<float> x = input(t, 256, 27 + static_cast<std::uint64_t>(t));
    RowMatrix<float> plain(t, 256), overlapped(t, 256);
    gpu.set_overlap_launches(false);
    gpu.forward(x, plain);
    if (prop.major >= 9) {
      gpu.set_overlap_launches(true);
      gpu.forward(x, overlapped);
      CHECK(testutil::bitwise_equal(plain, overlapped));
    } else {
      CHECK_THROWS_WITH(gpu.set_overlap_launches(true), Contains("compute capability 9.0"));
    }
  }
}

TEST_CASE("CUDA layer: a forward captured in a CUDA graph gives the same bits", "[cuda]") {
  const auto layer = cudatest::random_layer(256, 96, 8, 2, 22);
  cuda::DeviceMoELayer<float> gpu(layer);
  constexpr Index kTokens = 64;
  gpu.reserve(kTokens);
  // Both ways of launching, so that a capture that fails only one way says which.
  SECTION("plain launches") { gpu.set_overlap_launches(false); }
  SECTION("the default launches: overlapped on compute capability 9.0 and later") {}
  INFO("overlapped launches: " << gpu.overlap_launches());
  const RowMatrix<float> x = input(kTokens, 256, 23);
  RowMatrix<float> direct(kTokens, 256), graphed(kTokens, 256);
  gpu.forward(x, direct);

  cuda::DeviceBuffer<float> xd, yd;
  xd.upload(x.data(), static_cast<std::size_t>(x.size()));
  yd.reserve(static_cast<std::size_t>(x.size()));
  cudaStream_t stream{};
  MOE_CUDA_CHECK(cudaStreamCreate(&stream));
  cudaGraph_t graph{};
  cudaGraphExec_t exec{};
  MOE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  gpu.forward(xd.data(), yd.data(), kTokens, stream);
  MOE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MOE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  {
    const cudatest::ReversedSchedule reversed;
    for (int i = 0; i < 2; ++i) MOE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  }
  MOE_CUDA_CHECK(cudaMemcpyAsync(graphed.data(), yd.data(),
                                 sizeof(float) * static_cast<std::size_t>(x.size()), cudaMemcpyDeviceToHost,
                                 stream));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  CHECK(testutil::bitwise_equal(direct, graphed));
  MOE_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MOE_CUDA_CHECK(cudaGraphDestroy(graph));
  MOE_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("CUDA layer: the backend interface runs the same call on the CPU and on the GPU", "[cuda]") {
  const auto layer = cudatest::random_layer(256, 96, 8, 2, 24);
  const RowMatrix<float> x = input(64, 256, 25);
  CpuBackend<float> cpu;
  cuda::DeviceMoELayer<float> gpu(layer, 64);  // the workspace for 64 tokens, the default stream
  CHECK(gpu.capacity() == 64);
  const RowMatrix<float> on_cpu = forward_on(layer, x, cpu), on_gpu = forward_on(layer, x, gpu);
  // Each routes on its own logits here; the gaps between these tokens' k-th and (k+1)-th logits
  // are far above the logits' rounding differences, so the choices agree and so does the output.
  CHECK(testutil::rel_err(on_gpu, on_cpu) <= 1e-5);
  RowMatrix<float> direct(64, 256);
  gpu.forward(x, direct);
  CHECK(testutil::bitwise_equal(direct, on_gpu));

  // It holds that layer's weights: another layer object, even an equal copy, is refused.
  const MoELayer<float> copy = layer;
  RowMatrix<float> y(64, 256);
  CHECK_THROWS_WITH(copy.forward(x, y, gpu), Contains("other than the one it was built from"));
}
