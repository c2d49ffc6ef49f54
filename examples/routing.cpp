// routing — how tokens of a real model spread over experts.
//
// Loads one layer's FFN from the tiny-llama checkpoint (a Hugging Face LLaMA trained on the KJV
// Bible bytes), splits its d_h = 688 neurons into N experts with IndependentRandom, and routes the
// layer's real MLP inputs (the golden `mlp_in` of 256 held-out bytes) through a seeded random
// router — LLaMA-MoE's starting point before continual pre-training. Prints the first tokens'
// choices and a per-expert load histogram, compares the MoE output with Hugging Face's dense
// output, and writes the token → expert assignment as an SVG heat map.
//
// usage: routing [--fixtures DIR] [--layer L] [--experts N] [--top-k K] [--seed S] [--svg FILE]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <moe/moe.hpp>
#include <string>

using namespace moe;

namespace {

void write_svg(const std::string& path, const RoutingRecord<float>& rec, const std::vector<int>& bytes,
               int n) {
  const Index tokens = rec.expert_ids.rows();
  const int cw = 3, ch = 18, left = 70, top = 30;
  std::ofstream svg(path);
  MOE_CHECK(svg, "cannot write '" << path << "'");
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << left + cw * tokens + 20 << "' height='"
      << top + ch * n + 40 << "' font-family='monospace' font-size='11'>\n"
      << "<rect width='100%' height='100%' fill='white'/>\n"
      << "<text x='" << left << "' y='18'>token → expert routing weight (darker = larger), " << tokens
      << " tokens</text>\n";
  for (int e = 0; e < n; ++e)
    svg << "<text x='4' y='" << top + ch * e + 13 << "'>expert " << e << "</text>\n";
  for (Index t = 0; t < tokens; ++t)
    for (Index s = 0; s < rec.expert_ids.cols(); ++s) {
      const int e = rec.expert_ids(t, s);
      const int shade = 255 - static_cast<int>(255 * std::min(1.0f, rec.weights(t, s) * 2));
      const int c = bytes[static_cast<std::size_t>(t)];
      svg << "<rect x='" << left + cw * t << "' y='" << top + ch * e << "' width='" << cw << "' height='"
          << ch << "' fill='rgb(" << shade << "," << shade << ",255)'><title>token " << t << " '"
          << (c >= 32 && c < 127 && c != '<' && c != '&' && c != '\'' ? static_cast<char>(c) : '?')
          << "' slot " << s << " weight " << rec.weights(t, s) << "</title></rect>\n";
    }
  svg << "<text x='" << left << "' y='" << top + ch * n + 20 << "'>token index 0 … " << tokens - 1
      << "</text>\n</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "../shared/fixtures/tiny-llama", svg = "routing.svg";
  int layer_index = 1, n = 8, k = 2;
  std::uint64_t seed = 7;
  auto number = [](const std::string& opt, const char* v) {
    char* end = nullptr;
    const long long x = std::strtoll(v, &end, 10);
    if (end == v || *end != '\0' || x < 0) {
      std::fprintf(stderr, "routing: %s needs a non-negative integer, got '%s'\n", opt.c_str(), v);
      std::exit(2);
    }
    return x;
  };
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "routing: %s needs a value\n", a.c_str());
      return 2;
    }
    const char* v = argv[i + 1];
    if (a == "--fixtures") {
      dir = v;
    } else if (a == "--svg") {
      svg = v;
    } else if (a == "--layer") {
      layer_index = static_cast<int>(number(a, v));
    } else if (a == "--experts") {
      n = static_cast<int>(number(a, v));
    } else if (a == "--top-k") {
      k = static_cast<int>(number(a, v));
    } else if (a == "--seed") {
      seed = static_cast<std::uint64_t>(number(a, v));
    } else {
      std::fprintf(stderr, "routing: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (!std::ifstream(dir + "/model.safetensors") || !std::ifstream(dir + "/golden_ffn.safetensors")) {
    std::printf("routing: tiny-llama fixtures not found in '%s' (pass --fixtures DIR); skipping\n",
                dir.c_str());
    return 77;
  }
  try {
    const SafeTensorsFile model(dir + "/model.safetensors"), golden(dir + "/golden_ffn.safetensors");
    const std::string p = "layer" + std::to_string(layer_index);
    const FfnWeightsView<float> dense = llama_ffn_view(model, layer_index);
    const auto x = golden.matrix<float>(p + ".mlp_in");
    const auto y_hf = golden.matrix<float>(p + ".mlp_out");
    const auto ids = golden.vector<std::int32_t>("input_ids");
    const std::vector<int> bytes(ids.data(), ids.data() + ids.size());
    const Index tokens = x.rows(), d = dense.model_dim();

    const ExpertPartition partition = ExpertPartition::independent_random(dense.hidden_dim(), n, seed);
    detail::SplitMix64 rng(seed);
    ColMatrix<float> router(d, n);  // N(0, 1/d): logits of order 1 for unit-scale inputs
    for (Index i = 0; i < router.size(); ++i)
      router.data()[i] = static_cast<float>(rng.normal() / std::sqrt(double(d)));
    const MoELayer<float> layer(slice_experts(dense, partition), router, {k});

    std::printf(
        "tiny-llama layer %d: d = %ld, d_h = %ld -> %d experts of %ld neurons, top-%d, random router (seed "
        "%llu)\n",
        layer_index, static_cast<long>(d), static_cast<long>(dense.hidden_dim()), n,
        static_cast<long>(partition.expert_size(0)), k, static_cast<unsigned long long>(seed));
    ThreadPool pool;
    MoEWorkspace<float> ws;
    RoutingRecord<float> rec;
    RowMatrix<float> y(tokens, d);
    layer.forward(x, y, ws, &pool, &rec);

    std::printf("\nfirst tokens (held-out text):\n");
    for (Index t = 0; t < std::min<Index>(tokens, 12); ++t) {
      const int c = bytes[static_cast<std::size_t>(t)];
      std::printf("  %3ld '%s' ->", static_cast<long>(t),
                  c == '\n' ? "\\n" : std::string(1, static_cast<char>(c)).c_str());
      for (int s = 0; s < k; ++s) std::printf("  expert %d (%.3f)", rec.expert_ids(t, s), rec.weights(t, s));
      std::printf("\n");
    }
    std::printf("\nload per expert (%ld tokens x top-%d = %ld assignments; uniform would be %.1f each):\n",
                static_cast<long>(tokens), k, static_cast<long>(tokens * k), double(tokens * k) / n);
    const Index most = *std::max_element(rec.tokens_per_expert.begin(), rec.tokens_per_expert.end());
    for (int e = 0; e < n; ++e) {
      const Index c = rec.tokens_per_expert[static_cast<std::size_t>(e)];
      std::printf("  expert %2d %4ld |%s\n", e, static_cast<long>(c),
                  std::string(static_cast<std::size_t>(most ? 50 * c / most : 0), '#').c_str());
    }
    std::printf(
        "\nMoE vs Hugging Face dense output: |y_moe - y_dense| / |y_dense| = %.3f (scale N/k = %.2f)\n",
        (y - y_hf).norm() / y_hf.norm(), layer.scale());
    write_svg(svg, rec, bytes, n);
    std::printf("wrote %s\n", svg.c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "routing: %s\n", e.what());
    return 1;
  }
  return 0;
}
