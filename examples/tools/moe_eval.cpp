// moe_eval — byte-level next-token loss of a dense LLaMA or a LLaMA-MoE checkpoint on a text, and
// a picture of where a passage's bytes are routed.
//
// usage: moe_eval --model DIR --text FILE [--context 256] [--max-bytes N] [--threads N]
//                 [--trace FILE.svg] [--trace-bytes 64]
//
// The text is cut into consecutive windows of `context` bytes (a trailing partial window is
// dropped); each window is scored on its own from an empty KV cache; the mean over all
// context − 1 predictions of every window is printed last as `nats_per_byte=<x> bits_per_byte=<y>`.
// For a LLaMA-MoE model each layer's expert load (share of (token, slot) pairs) is printed too,
// and --trace writes the routing of the first window's first --trace-bytes bytes as an SVG: one
// row per byte, one column per (layer, expert), a cell shaded by the routing weight the byte gave
// that expert. Windows are spread over --threads threads (default: every core); each window's
// loss is computed by one thread alone and the sum runs in window order, so the result is
// bitwise the same for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <moe/core/thread_pool.hpp>
#include <moe/model/llama_model.hpp>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tool_util.hpp"

using namespace moe;
using moe::tool::parse_int;
using moe::tool::Progress;

namespace {

constexpr const char* kUsage =
    "usage: moe_eval --model DIR --text FILE [--context 256] [--max-bytes N] [--threads N]\n"
    "                [--trace FILE.svg] [--trace-bytes 64]\n";

int usage(const std::string& why) {
  std::fprintf(stderr, "moe_eval: %s\n%s", why.c_str(), kUsage);
  return 2;
}

/// A byte as SVG text: printable ASCII escaped for XML, a few controls by symbol, others as hex.
std::string svg_char(int c) {
  switch (c) {
    case '<':
      return "&lt;";
    case '>':
      return "&gt;";
    case '&':
      return "&amp;";
    case '\'':
      return "&apos;";
    case '"':
      return "&quot;";
    case ' ':
      return "\u2423";  // open box
    case '\n':
      return "\u21b5";  // return arrow
    default:
      break;
  }
  if (c >= 33 && c < 127) return std::string(1, static_cast<char>(c));
  char hex[8];
  std::snprintf(hex, sizeof hex, "x%02X", c);
  return hex;
}

/// The routing trace: rows = the passage's bytes (index and character), columns = layers x
/// experts; a chosen expert's cell is shaded by its routing weight (darker = larger), unchosen
/// cells stay white. `title`: lines of XML-escaped text above the grid.
void write_trace(const std::string& path, const std::vector<std::int32_t>& bytes,
                 const std::vector<RoutingRecord<float>>& routing, Index rows,
                 const std::vector<std::string>& title) {
  const int cw = 14, ch = 14, left = 64, gap = 10, line = 15;
  const Index top = 36 + line * static_cast<Index>(title.size());
  const Index n = static_cast<Index>(routing.front().tokens_per_expert.size());
  const auto layers = static_cast<Index>(routing.size());
  Index width = left + layers * (n * cw + gap) + 10;
  for (const std::string& t : title) width = std::max<Index>(width, 8 + 7 * static_cast<Index>(t.size()));
  const Index height = top + rows * ch + 20;
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
      << "' font-family='monospace' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n";
  for (std::size_t i = 0; i < title.size(); ++i)
    svg << "<text x='4' y='" << 14 + line * static_cast<Index>(i) << "'>" << title[i] << "</text>\n";
  for (Index l = 0; l < layers; ++l) {
    const Index x0 = left + l * (n * cw + gap);
    svg << "<text x='" << x0 << "' y='" << top - 20 << "'>layer " << l << "</text>\n";
    for (Index e = 0; e < n; ++e)
      if (n <= 16 || e % 4 == 0)
        svg << "<text x='" << x0 + e * cw + 2 << "' y='" << top - 4 << "' font-size='8'>" << e << "</text>\n";
    svg << "<rect x='" << x0 << "' y='" << top << "' width='" << n * cw << "' height='" << rows * ch
        << "' fill='none' stroke='#bbb'/>\n";
  }
  for (Index t = 0; t < rows; ++t) {
    const int c = bytes[static_cast<std::size_t>(t)];
    const Index y = top + t * ch;
    svg << "<text x='4' y='" << y + 11 << "'>" << t << "</text><text x='" << left - 16 << "' y='" << y + 11
        << "'>" << svg_char(c) << "</text>\n";
    for (Index l = 0; l < layers; ++l) {
      const RoutingRecord<float>& r = routing[static_cast<std::size_t>(l)];
      for (Index s = 0; s < r.expert_ids.cols(); ++s) {
        const int e = r.expert_ids(t, s);
        if (e < 0) continue;  // dropped by an expert capacity
        const int shade = 235 - static_cast<int>(215 * std::clamp(r.weights(t, s), 0.0f, 1.0f));
        svg << "<rect x='" << left + l * (n * cw + gap) + e * cw << "' y='" << y << "' width='" << cw
            << "' height='" << ch << "' fill='rgb(" << shade << "," << shade << ",255)'><title>byte " << t
            << " layer " << l << " expert " << e << " weight " << r.weights(t, s) << "</title></rect>\n";
      }
    }
  }
  svg << "</svg>\n";
  std::ofstream out(path, std::ios::binary);
  MOE_CHECK(out << svg.str(), "cannot write trace '" << path << "'");
}

}  // namespace

int main(int argc, char** argv) {
  const std::set<std::string> flags = {"--model",   "--text",  "--context",    "--max-bytes",
                                       "--threads", "--trace", "--trace-bytes"};
  std::map<std::string, std::string> opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!flags.count(a)) return usage("unknown option '" + a + "'");
    if (i + 1 >= argc) return usage("option " + a + " needs a value");
    if (opt.count(a)) return usage("option " + a + " given twice");
    opt[a] = argv[++i];
  }
  for (const char* required : {"--model", "--text"})
    if (!opt.count(required)) return usage(std::string("missing ") + required);
  if (opt.count("--trace-bytes") && !opt.count("--trace")) return usage("--trace-bytes needs --trace");
  try {
    auto integer = [&](const char* flag, std::int64_t fallback) {
      return opt.count(flag) ? parse_int(flag, opt[flag]) : fallback;
    };
    const std::int64_t context = integer("--context", 256), max_bytes = integer("--max-bytes", -1),
                       threads = integer("--threads", 0), trace_bytes = integer("--trace-bytes", 64);
    MOE_CHECK(context >= 2, "--context must be at least 2, got " << context);
    MOE_CHECK(!opt.count("--max-bytes") || max_bytes >= context,
              "--max-bytes must be at least --context (" << context << "), got " << max_bytes);
    MOE_CHECK(threads >= 0 && threads <= 1024,
              "--threads must be in [0, 1024] (0: every core), got " << threads);
    MOE_CHECK(trace_bytes >= 1 && trace_bytes <= context,
              "--trace-bytes must be in [1, --context = " << context << "], got " << trace_bytes);
    const HfCheckpoint ckpt(opt["--model"]);
    const LlamaModel model(ckpt);
    MOE_CHECK(model.config().vocab == 256,
              "moe_eval scores bytes: the model needs vocab_size 256, it has " << model.config().vocab);
    const bool moe = !model.moe_layers().empty();
    MOE_CHECK(moe || !opt.count("--trace"),
              "--trace draws expert routing: '" << opt["--model"] << "' is a dense model");
    std::ifstream in(opt["--text"], std::ios::binary);
    MOE_CHECK(in, "cannot open text '" << opt["--text"] << "'");
    std::vector<std::int32_t> bytes;
    for (char c; (max_bytes < 0 || static_cast<std::int64_t>(bytes.size()) < max_bytes) && in.get(c);)
      bytes.push_back(static_cast<std::int32_t>(static_cast<unsigned char>(c)));
    const auto windows = static_cast<int>(static_cast<std::int64_t>(bytes.size()) / context);
    MOE_CHECK(windows > 0, "text '" << opt["--text"] << "' has " << bytes.size()
                                    << " bytes, less than one window of " << context);

    // Each task scores a contiguous run of windows with its own cache; per-window losses and
    // per-task loads are combined in a fixed order afterwards.
    ThreadPool pool(static_cast<int>(threads));
    const int tasks = std::min(pool.size(), windows);
    std::vector<double> nats(static_cast<std::size_t>(windows));
    std::vector<std::vector<std::vector<Index>>> load(static_cast<std::size_t>(tasks));
    std::vector<RoutingRecord<float>> trace;
    const Progress bar("moe_eval", windows);
    std::mutex progress_mutex;
    int done = 0;
    pool.parallel_for(tasks, [&](Index task) {
      LlamaCache cache = model.make_cache(context);
      std::vector<RoutingRecord<float>> routing;
      auto& task_load = load[static_cast<std::size_t>(task)];
      task_load.assign(model.moe_layers().size(), {});
      for (std::int64_t w = windows * task / tasks; w < windows * (task + 1) / tasks; ++w) {
        const auto begin = bytes.begin() + static_cast<std::ptrdiff_t>(w * context);
        const std::vector<std::int32_t> ids(begin, begin + static_cast<std::ptrdiff_t>(context));
        cache.clear();
        const Eigen::Ref<const RowMatrix<float>> logits =
            model.forward(ids, cache, nullptr, nullptr, moe ? &routing : nullptr);
        nats[static_cast<std::size_t>(w)] = next_token_loss(logits, ids);
        for (std::size_t l = 0; l < task_load.size(); ++l) {
          const std::vector<Index>& count = routing[l].tokens_per_expert;
          task_load[l].resize(count.size(), 0);
          for (std::size_t e = 0; e < count.size(); ++e) task_load[l][e] += count[e];
        }
        if (w == 0 && opt.count("--trace")) trace = routing;
        const std::lock_guard<std::mutex> lock(progress_mutex);
        ++done;
        bar.step(done, "window " + std::to_string(done));
      }
    });
    double total_nats = 0;
    for (const double x : nats) total_nats += x;

    const std::string type = ckpt.config().value("model_type", std::string());
    std::printf("%s (%s): %d windows of %lld bytes, %lld predictions\n", opt["--model"].c_str(), type.c_str(),
                windows, static_cast<long long>(context), static_cast<long long>(windows * (context - 1)));
    for (std::size_t l = 0; l < model.moe_layers().size(); ++l) {
      std::vector<double> count;
      for (const auto& task_load : load) {
        count.resize(task_load[l].size(), 0.0);
        for (std::size_t e = 0; e < count.size(); ++e) count[e] += static_cast<double>(task_load[l][e]);
      }
      double total = 0;
      for (const double c : count) total += c;
      std::printf("layer %zu load:", l);
      for (const double c : count) std::printf(" %.3f", c / total);
      std::printf("\n");
    }
    if (opt.count("--trace")) {
      auto escape = [](const std::string& text) {
        std::string out;
        for (const char c : text)
          out += std::string("<>&'\"").find(c) != std::string::npos ? svg_char(c) : std::string(1, c);
        return out;
      };
      const std::vector<std::string> title = {
          escape("model: " + opt["--model"] + " (" + type + ")"),
          escape("text: first " + std::to_string(trace_bytes) + " bytes of " + opt["--text"]),
          escape(std::string("cell: the byte chose this expert; darker = larger routing weight") +
                 (type == "llama_moe_residual" ? " (residual experts see every byte)" : ""))};
      write_trace(opt["--trace"], bytes, trace, trace_bytes, title);
      std::printf("wrote routing trace %s (%lld bytes x %zu layers x %zu experts)\n", opt["--trace"].c_str(),
                  static_cast<long long>(trace_bytes), trace.size(), trace.front().tokens_per_expert.size());
    }
    const double mean = total_nats / windows;
    std::printf("nats_per_byte=%.6f bits_per_byte=%.6f\n", mean, mean / std::log(2.0));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_eval: %s\n", e.what());
    return 1;
  }
}
