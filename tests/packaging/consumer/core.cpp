// Uses only moe::core (core/, layer/, construction/): builds a 2-expert layer from a tiny dense FFN
// and checks one forward against the dense FFN, with no JSON library in the build.
#include <cmath>
#include <cstdio>
#include <moe/construction/partition.hpp>
#include <moe/construction/slicing.hpp>
#include <moe/layer/ffn.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/presets.hpp>

#if defined(NLOHMANN_JSON_VERSION_MAJOR)
#error "a moe::core header included nlohmann/json"
#endif

int main() {
  const moe::Index d = 4, dh = 8;
  const moe::ColMatrix<float> wg = moe::ColMatrix<float>::Constant(d, dh, 0.1f),
                              wd = moe::ColMatrix<float>::Constant(dh, d, 0.2f);
  const moe::FfnWeightsView<float> dense(wg.data(), wg.data(), wd.data(), d, dh);
  const auto part = moe::ExpertPartition::independent_random(dh, 2, 1);
  // Mixtral's routing: softmax, top-2 of 2, renormalised, scale 1: y = p0 E0 + p1 E1 with
  // p0 + p1 = 1, and the experts are identical here, so y is half the dense output.
  const moe::MoELayer<float> layer(moe::slice_experts(dense, part), moe::ColMatrix<float>::Zero(d, 2),
                                   moe::presets::mixtral(2));
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Ones(1, d);
  moe::RowMatrix<float> y(1, d), yd(1, d);
  moe::MoEWorkspace<float> ws;
  layer.forward(x, y, ws);
  moe::FfnWorkspace<float> fws;
  moe::ffn_forward<float>(dense, x, yd, fws);
  const bool ok = std::abs(y(0, 0) - 0.5f * yd(0, 0)) < 1e-6f;
  std::printf("consumer (moe::core): y=%g, dense/2=%g: %s\n", y(0, 0), 0.5f * yd(0, 0),
              ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
