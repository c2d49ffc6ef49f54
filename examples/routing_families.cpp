// routing_families — one input through the router of every MoE family moe knows, side by side:
// which experts each picks for the first tokens (with their weights), and the routing statistics.
//
// The experts and router are random (seeded), shared by every family, so differences come from the
// routing rules alone: softmax vs sigmoid scores, renormalisation, groups, selection bias,
// top-k-then-softmax, capacity.
//
// usage: routing_families [--tokens T] [--show S] [--seed S]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <moe/moe.hpp>
#include <string>
#include <vector>

using namespace moe;

namespace {

ColMatrix<float> gaussian(Index rows, Index cols, double stddev, detail::SplitMix64& rng) {
  ColMatrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(stddev * rng.normal());
  return m;
}

struct Family {
  const char* name;
  MoEConfig config;
  RouterGate<float> gate;
};

}  // namespace

int main(int argc, char** argv) {
  Index tokens = 64;
  int show = 4;
  std::uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    char* end = nullptr;
    const long long v = i + 1 < argc ? std::strtoll(argv[i + 1], &end, 10) : -1;
    if ((a != "--tokens" && a != "--show" && a != "--seed") || i + 1 >= argc || *end != '\0' || v < 1) {
      std::fprintf(stderr, "usage: routing_families [--tokens T>=1] [--show S>=1] [--seed S>=1]\n");
      return 2;
    }
    ++i;
    if (a == "--tokens") tokens = v;
    if (a == "--show") show = static_cast<int>(v);
    if (a == "--seed") seed = static_cast<std::uint64_t>(v);
  }
  show = static_cast<int>(std::min<Index>(show, tokens));

  constexpr Index d = 64, m = 32;
  constexpr int n = 16;
  detail::SplitMix64 rng(seed);
  std::vector<FfnWeights<float>> experts;
  for (int e = 0; e < n; ++e)
    experts.push_back({gaussian(d, m, 0.125, rng), gaussian(d, m, 0.125, rng), gaussian(m, d, 0.18, rng)});
  const ColMatrix<float> router = gaussian(d, n, 0.125, rng);
  RowMatrix<float> x = gaussian(tokens, d, 1.0, rng);

  RouterGate<float> linear(router);
  RouterGate<float> with_bias(router);
  with_bias.bias = gaussian(n, 1, 0.5, rng);
  RouterGate<float> corrected(router);
  corrected.selection_bias = gaussian(n, 1, 0.5, rng);
  RouterGate<float> mlp(gaussian(d, n, 0.125, rng));
  mlp.mlp_out = gaussian(n, n, 0.25, rng);
  mlp.noise = gaussian(d, n, 0.125, rng);

  const std::vector<Family> families = {
      {"llama-moe reference", presets::llama_moe_reference(4), linear},
      {"llama-moe gate", presets::llama_moe_gate(4, 4.0), mlp},
      {"llama-moe gate (train)", presets::llama_moe_gate(4, 4.0, true, seed), mlp},
      {"mixtral", presets::mixtral(2), linear},
      {"qwen2-moe", presets::qwen2_moe(4, false), linear},
      {"qwen3-moe / olmoe", presets::qwen3_moe(4, true), linear},
      {"deepseek-v2", presets::deepseek_v2(4, true, 4, 2, 16.0, false), linear},
      {"deepseek-v3 / glm-4", presets::deepseek_v3(4, 4, 2, 2.5), corrected},
      {"llama 4", presets::llama4(1), linear},
      {"gpt-oss", presets::gpt_oss(4), with_bias},
      {"dbrx", presets::dbrx(4, 1.0), linear},
      {"switch (cf 1.0)", presets::switch_transformer(1.0), linear},
  };

  std::printf("d=%lld m=%lld N=%d, %lld tokens (random, seed %llu)\n\n", static_cast<long long>(d),
              static_cast<long long>(m), n, static_cast<long long>(tokens),
              static_cast<unsigned long long>(seed));
  std::printf("%-24s %3s %9s %9s %9s %9s %9s %7s  first tokens: expert(weight) ...\n", "family", "k",
              "CV2 load", "CV2 imp", "aux", "z-loss", "entropy", "dropped");
  MoEWorkspace<float> ws;
  RowMatrix<float> y(tokens, d);
  for (const Family& f : families) {
    const MoELayer<float> layer(experts, f.gate, f.config);
    RoutingRecord<float> rec;
    layer.forward(x, y, ws, nullptr, &rec);
    const RoutingStats& s = rec.stats;
    std::printf("%-24s %3d %9.4f %9.4f %9.4f %9.4f %9.4f %7lld ", f.name, layer.top_k(), s.cv2_tokens,
                s.cv2_importance, s.aux_loss, s.z_loss, s.entropy, static_cast<long long>(s.dropped));
    for (int t = 0; t < show; ++t) {
      std::printf(" |");
      for (Index j = 0; j < rec.expert_ids.cols(); ++j) {
        if (rec.expert_ids(t, j) < 0)
          std::printf(" dropped");
        else
          std::printf(" %d(%.2f)", rec.expert_ids(t, j), rec.weights(t, j));
      }
    }
    std::printf("\n");
  }
  std::printf(
      "\nweights are the router's G(x)_i before the layer's output scale; deepseek scales them by "
      "routed_scaling_factor, llama 4 multiplies the expert's input by them.\n");
  return 0;
}
