// Builds a 2-expert layer from a tiny dense FFN and checks one forward against the dense FFN.
#include <cmath>
#include <cstdio>
#include <moe/moe.hpp>

int main() {
  const moe::Index d = 4, dh = 8;
  moe::ColMatrix<float> wg = moe::ColMatrix<float>::Constant(d, dh, 0.1f),
                        wd = moe::ColMatrix<float>::Constant(dh, d, 0.2f);
  moe::FfnWeightsView<float> dense(wg.data(), wg.data(), wd.data(), d, dh);
  const auto part = moe::ExpertPartition::independent_random(dh, 2, 1);
  // k = N = 2, weights renormalised, scale 1: y = p0 E0 + p1 E1 with p0 + p1 = 1; the experts are
  // identical here (constant weights), so y equals half the dense output.
  moe::MoELayer<float> layer(moe::slice_experts(dense, part), moe::ColMatrix<float>::Zero(d, 2),
                             {2, moe::TopKWeights::kRenormalized, 1.0});
  moe::RowMatrix<float> x = moe::RowMatrix<float>::Ones(1, d), y(1, d), yd(1, d);
  moe::MoEWorkspace<float> ws;
  layer.forward(x, y, ws);
  moe::FfnWorkspace<float> fws;
  moe::ffn_forward<float>(dense, x, yd, fws);
  const bool ok = std::abs(y(0, 0) - 0.5f * yd(0, 0)) < 1e-6f;
  std::printf("consumer: moe %d.%d.%d, y=%g, dense/2=%g: %s\n", MOE_VERSION_MAJOR, MOE_VERSION_MINOR,
              MOE_VERSION_PATCH, y(0, 0), 0.5f * yd(0, 0), ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
