// routing — how tokens spread over experts when a dense LLaMA FFN is split into experts, as
// LLaMA-MoE starts before its continual pre-training.
//
// With --model DIR (a Hugging Face LLaMA checkpoint directory, e.g. tiny-llama, a byte-level model
// trained on the KJV Bible): runs the model on the bytes of a text (--text FILE, or a built-in
// verse) as token ids and takes layer L's real MLP inputs. Without --model: a random FFN of
// tiny-llama's shape (d = 256, d_h = 688) and random inputs, so the demo runs on a fresh clone.
// Either way it splits the FFN's neurons into N experts with IndependentRandom (formula 3), routes
// the inputs through a seeded random router (formula 2), prints the first tokens' choices and a
// per-expert load histogram, compares the MoE output with the dense FFN's, and writes the token →
// expert assignment as an SVG heat map.
//
// usage: routing [--model DIR] [--text FILE] [--tokens T] [--layer L] [--experts N] [--top-k K]
//                [--seed S] [--svg FILE]
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

/// What the demo routes: one FFN and T inputs of width d, with a label per token.
struct Inputs {
  FfnWeights<float> dense;
  RowMatrix<float> x;       ///< T x d
  std::vector<int> labels;  ///< the byte of each token, or -1 (random inputs)
  std::string source;
};

/// Layer `layer`'s FFN of the checkpoint in `dir` and its MLP inputs on the text's first `tokens`
/// bytes, each byte a token id (byte-level models such as tiny-llama).
Inputs model_inputs(const std::string& dir, const std::string& text, Index tokens, int layer) {
  const HfCheckpoint ckpt(dir);
  const LlamaModel model(ckpt);
  MOE_CHECK(layer >= 0 && layer < model.config().layers,
            "--layer " << layer << " is outside the model's " << model.config().layers << " layers");
  MOE_CHECK(model.config().vocab >= 256,
            "the model's vocabulary (" << model.config().vocab << ") cannot take bytes as token ids");
  std::vector<std::int32_t> ids;
  for (std::size_t i = 0; i < text.size() && static_cast<Index>(ids.size()) < tokens; ++i)
    ids.push_back(static_cast<unsigned char>(text[i]));
  MOE_CHECK(!ids.empty(), "the text is empty");
  std::vector<RowMatrix<float>> mlp_in;
  model.forward(ids, &mlp_in);
  return {llama_ffn_weights(ckpt, layer), mlp_in[static_cast<std::size_t>(layer)],
          std::vector<int>(ids.begin(), ids.end()), dir + ", layer " + std::to_string(layer)};
}

/// A random FFN of tiny-llama's shape and `tokens` random unit-variance inputs.
Inputs random_inputs(Index tokens, std::uint64_t seed) {
  const Index d = 256, dh = 688;
  detail::SplitMix64 rng(seed + 1);
  const auto gaussian = [&](Index rows, Index cols, double sd) {
    ColMatrix<float> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(sd * rng.normal());
    return m;
  };
  Inputs in{{gaussian(d, dh, 1 / std::sqrt(double(d))), gaussian(d, dh, 1 / std::sqrt(double(d))),
             gaussian(dh, d, 1 / std::sqrt(double(dh)))},
            RowMatrix<float>(gaussian(tokens, d, 1.0)),
            std::vector<int>(static_cast<std::size_t>(tokens), -1),
            "a random FFN (no --model)"};
  return in;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f, "cannot read '" << path << "'");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

/// A token's label for the printout: its byte, escaped, or its index.
std::string label(const Inputs& in, Index t) {
  const int c = in.labels[static_cast<std::size_t>(t)];
  if (c < 0) return "";
  if (c == '\n') return "'\\n'";
  return c >= 32 && c < 127 ? "'" + std::string(1, static_cast<char>(c)) + "'" : "0x" + std::to_string(c);
}

void print_routing(const Inputs& in, const RoutingRecord<float>& rec, int n, int k) {
  const Index tokens = in.x.rows();
  std::printf("\nfirst tokens:\n");
  for (Index t = 0; t < std::min<Index>(tokens, 12); ++t) {
    std::printf("  %3ld %-5s ->", static_cast<long>(t), label(in, t).c_str());
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
}

/// Command-line options, with the defaults of a run without arguments.
struct Options {
  std::string model, text, svg = "routing.svg";
  Index tokens = 256;
  int layer = 1, n = 8, k = 2;
  std::uint64_t seed = 7;
};

Options parse_options(int argc, char** argv) {
  Options o;
  const auto number = [](const std::string& opt, const char* v) {
    char* end = nullptr;
    const long long x = std::strtoll(v, &end, 10);
    MOE_CHECK(end != v && *end == '\0' && x >= 0, opt << " needs a non-negative integer, got '" << v << "'");
    return x;
  };
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    MOE_CHECK(i + 1 < argc, a << " needs a value");
    const char* v = argv[i + 1];
    if (a == "--model")
      o.model = v;
    else if (a == "--text")
      o.text = v;
    else if (a == "--svg")
      o.svg = v;
    else if (a == "--tokens")
      o.tokens = number(a, v);
    else if (a == "--layer")
      o.layer = static_cast<int>(number(a, v));
    else if (a == "--experts")
      o.n = static_cast<int>(number(a, v));
    else if (a == "--top-k")
      o.k = static_cast<int>(number(a, v));
    else if (a == "--seed")
      o.seed = static_cast<std::uint64_t>(number(a, v));
    else
      MOE_CHECK(false, "unknown option " << a);
  }
  MOE_CHECK(o.tokens > 0, "--tokens must be positive");
  return o;
}

const char* const kVerse =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. And God saw the light, that it was good: and "
    "God divided the light from the darkness.";

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse_options(argc, argv);
    const Inputs in = o.model.empty() ? random_inputs(o.tokens, o.seed)
                                      : model_inputs(o.model, o.text.empty() ? kVerse : read_text(o.text),
                                                     o.tokens, o.layer);
    const FfnWeightsView<float> dense = in.dense.view();
    const Index tokens = in.x.rows(), d = dense.model_dim();

    const ExpertPartition partition = ExpertPartition::independent_random(dense.hidden_dim(), o.n, o.seed);
    detail::SplitMix64 rng(o.seed);
    ColMatrix<float> router(d, o.n);  // N(0, 1/d): logits of order 1 for unit-scale inputs
    for (Index i = 0; i < router.size(); ++i)
      router.data()[i] = static_cast<float>(rng.normal() / std::sqrt(double(d)));
    const MoELayer<float> layer(slice_experts(dense, partition), router, {o.k});
    std::printf("%s: d = %ld, d_h = %ld -> %d experts of %ld neurons, top-%d, random router (seed %llu)\n",
                in.source.c_str(), static_cast<long>(d), static_cast<long>(dense.hidden_dim()), o.n,
                static_cast<long>(partition.expert_size(0)), o.k, static_cast<unsigned long long>(o.seed));

    ThreadPool pool;
    MoEWorkspace<float> ws;
    RoutingRecord<float> rec;
    RowMatrix<float> y(tokens, d), y_dense(tokens, d);
    layer.forward(in.x, y, ws, &pool, &rec);
    FfnWorkspace<float> dense_ws;
    ffn_forward<float>(dense, in.x, y_dense, dense_ws, &pool);

    print_routing(in, rec, o.n, o.k);
    std::printf("\nMoE vs dense FFN output: |y_moe - y_dense| / |y_dense| = %.3f (scale N/k = %.2f)\n",
                (y - y_dense).norm() / y_dense.norm(), layer.scale());
    write_svg(o.svg, rec, in.labels, o.n);
    std::printf("wrote %s\n", o.svg.c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "routing: %s\n", e.what());
    return 1;
  }
  return 0;
}
