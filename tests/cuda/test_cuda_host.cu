// The CUDA path's host-side checks, which need no GPU: check_supported names what it refuses.
// (Built by nvcc, so the .cuh headers are compiled in CI, where there is no GPU.)
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <moe/cuda/moe_layer.cuh>

#include "cuda_test_util.hpp"

using namespace moe;
using Catch::Contains;

TEST_CASE("check_supported accepts the LLaMA-MoE and Mixtral routers, float and bf16 experts",
          "[cuda][host]") {
  CHECK_NOTHROW(cuda::check_supported(cudatest::random_layer(32, 8, 8, 2, 1)));
  CHECK_NOTHROW(cuda::check_supported(
      cudatest::random_layer(32, 8, 8, 2, 1, MoEConfig{2, TopKWeights::kRenormalized})));
  CHECK_NOTHROW(cuda::check_supported(cudatest::random_layer<Eigen::bfloat16>(32, 8, 256, 32, 1)));
}

TEST_CASE("check_supported names what the CUDA path does not implement", "[cuda][host]") {
  const auto refused = [](MoEConfig c, const char* what) {
    CHECK_THROWS_WITH(cuda::check_supported(cudatest::random_layer(32, 8, 8, 2, 1, c)), Contains(what));
  };
  MoEConfig c;
  c.router.capacity_factor = 1.0;
  refused(c, "expert capacity");
  c = MoEConfig{};
  c.scale_input = true;
  refused(c, "scale_input");
  c = MoEConfig{};
  c.activation = GluActivation::geglu();
  refused(c, "SwiGLU");
  c = MoEConfig{};
  c.router.score = ScoreFunction::kSigmoid;
  refused(c, "softmax");
  c = MoEConfig{};
  c.router.renormalize = Renormalize::kPNorm;
  refused(c, "p-norm");

  auto layer = cudatest::random_layer(32, 8, 8, 2, 1);
  layer.set_shared_experts({testutil::random_ffn<float>(32, 8, 5, 0.05)});
  CHECK_THROWS_WITH(cuda::check_supported(layer), Contains("shared experts"));

  CHECK_THROWS_WITH(cuda::check_supported(cudatest::random_layer(8, 4, 257, 2, 1)), Contains("N = 257"));
  CHECK_THROWS_WITH(cuda::check_supported(cudatest::random_layer(8, 4, 40, 33, 1)), Contains("k = 33"));

  std::vector<FfnWeights<float>> experts{testutil::random_ffn<float>(16, 4, 1, 0.05),
                                         testutil::random_ffn<float>(16, 4, 4, 0.05)};
  experts[1].down_bias = Eigen::VectorXf::Ones(16);
  const MoELayer<float> biased(std::move(experts), testutil::random_matrix<ColMatrix<float>>(16, 2, 9),
                               MoEConfig{1});
  CHECK_THROWS_WITH(cuda::check_supported(biased), Contains("expert 1 has biases"));
}

namespace cudatest {
bool second_unit_linked();
}

TEST_CASE("the CUDA headers link from two translation units", "[cuda][host]") {
  CHECK(cudatest::second_unit_linked());  // and this unit instantiates the layer too (below)
}

template class moe::cuda::DeviceMoELayer<float>;
