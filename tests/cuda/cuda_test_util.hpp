// Layers for the CUDA tests: random experts and router, built on the host.
#pragma once

#include <cuda_runtime.h>  // the toolkit's, or the emulator's (which defines MOE_CUDA_EMULATION)

#include <moe/layer/moe_layer.hpp>

#include "test_util.hpp"

namespace cudatest {

/// N experts of width m over d, entries N(0, 0.05²) (outputs of order one), the router N(0, 1/d)
/// (logits of order one: routing spread over the experts), weights stored as W.
template <class W = float>
moe::MoELayer<float, W> random_layer(Eigen::Index d, Eigen::Index m, int n, int k, std::uint64_t seed,
                                     moe::MoEConfig config = {}) {
  std::vector<moe::FfnWeights<W>> experts;
  for (int e = 0; e < n; ++e) {
    const auto f = testutil::random_ffn<float>(d, m, seed + 3 * static_cast<std::uint64_t>(e), 0.05);
    if constexpr (std::is_same_v<W, float>)
      experts.push_back(f);
    else
      experts.push_back(moe::convert_weights<W>(f.view()));
  }
  config.top_k = k;
  return moe::MoELayer<float, W>(
      std::move(experts),
      testutil::random_matrix<moe::ColMatrix<float>>(d, n, seed + 1000, 1.0 / std::sqrt(double(d))), config);
}

/// Within its scope the CPU emulator runs its reverse schedule (emulator.hpp, Schedule::kReverse:
/// blocks and warps last to first, each warp as far ahead as the block barrier lets it get): a
/// forward in the scope gives other bits than one outside it if a kernel reads what another thread
/// writes without a barrier between, or what another block writes. On a GPU it does nothing (the
/// hardware picks the order).
class ReversedSchedule {
 public:
#if defined(MOE_CUDA_EMULATION)
  ReversedSchedule() { moe_emulation::set_schedule(moe_emulation::Schedule::kReverse); }
  ~ReversedSchedule() { moe_emulation::set_schedule(moe_emulation::Schedule::kForward); }
#else
  ReversedSchedule() {}  // user-provided: no unused-variable warning where it is declared
#endif
  ReversedSchedule(const ReversedSchedule&) = delete;
  ReversedSchedule& operator=(const ReversedSchedule&) = delete;
};

}  // namespace cudatest
