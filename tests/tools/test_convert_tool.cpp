// The moe_convert, moe_eval and moe_generate executables on the real tiny-llama checkpoint: every
// method writes a LLaMA-MoE checkpoint whose experts are the dense neurons of partition.json and
// whose layers reload; moe_eval reproduces Hugging Face's loss, evaluates converted checkpoints and
// draws routing traces; moe_generate decodes greedily what the full forward predicts and samples
// reproducibly; bad arguments and bad checkpoints are refused with a message. Exits 77 (skipped)
// without the fixtures; registered by tests/CMakeLists.txt with MOE_CONVERT_TOOL, MOE_EVAL_TOOL
// and MOE_GENERATE_TOOL set.
#define CATCH_CONFIG_RUNNER
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <moe/moe.hpp>

#include "test_util.hpp"

using namespace moe;
namespace fs = std::filesystem;

namespace {

std::string fixture_dir() {
  const char* env = std::getenv("MOE_FIXTURE_DIR");
  return env ? env : MOE_FIXTURE_DIR;
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("moe_convert_test_" + std::to_string(::getpid()));
  TempDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

/// Runs the tool named by environment variable `env`; stdout and stderr go to `log`, or stderr to
/// `err` when given.
int run_tool(const char* env, const std::vector<std::string>& args, const fs::path& log,
             const fs::path& err = {}) {
  const char* tool = std::getenv(env);
  REQUIRE(tool != nullptr);
  std::string cmd = std::string("'") + tool + "'";
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " > '" + log.string() + "' " + (err.empty() ? std::string("2>&1") : "2> '" + err.string() + "'");
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

int run(const std::vector<std::string>& args, const fs::path& log) {
  return run_tool("MOE_CONVERT_TOOL", args, log);
}

/// moe_eval's nats_per_byte from its log (REQUIREs the line).
double nats_per_byte(const std::string& printed) {
  const auto at = printed.find("nats_per_byte=");
  REQUIRE(at != std::string::npos);
  return std::stod(printed.substr(at + 14));
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

int main(int argc, char** argv) {
  if (!std::getenv("MOE_CONVERT_TOOL")) {
    std::printf("SKIPPED: MOE_CONVERT_TOOL is not set\n");
    return 77;
  }
  if (!std::ifstream(fixture_dir() + "/model.safetensors") ||
      !std::ifstream(fixture_dir() + "/heldout.txt")) {
    std::printf("SKIPPED: tiny-llama fixtures not found in %s (set MOE_FIXTURE_DIR)\n",
                fixture_dir().c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}

TEST_CASE("moe_convert writes a valid LLaMA-MoE checkpoint with every method", "[tool]") {
  TempDir tmp;
  const std::string f = fixture_dir();
  const HfCheckpoint dense(f);
  const RowMatrix<float> x = testutil::random_matrix<RowMatrix<float>>(16, 256, 3);
  for (const std::string method :
       {"random", "clustering", "coactivation", "gradient", "sharing-inner", "sharing-inter"}) {
    SECTION(method) {
      const fs::path out = tmp.path / method, log = tmp.path / (method + ".log");
      std::vector<std::string> args = {"--model",        f,
                                       "--output",       out.string(),
                                       "--experts",      "8",
                                       "--top-k",        "2",
                                       "--method",       method,
                                       "--seed",         "5",
                                       "--calib",        f + "/heldout.txt",
                                       "--calib-tokens", "512",
                                       "--router",       method == "random" ? "random" : "fit"};
      if (method == "gradient" || method.rfind("sharing", 0) == 0) {
        args.push_back("--importance");
        args.push_back(f + "/golden_ffn.safetensors");
      }
      REQUIRE(run(args, log) == 0);
      const std::string printed = slurp(log);
      INFO(printed);
      CHECK(printed.find("layer 3: ") != std::string::npos);
      CHECK(printed.find("oracle recall") != std::string::npos);
      CHECK(printed.find("next-byte loss on 1 held-out windows of 256") != std::string::npos);
      CHECK_FALSE(fs::exists(out.string() + ".tmp." + std::to_string(::getpid())));

      const HfCheckpoint moe_ck(out.string());
      const nlohmann::json& cfg = moe_ck.config();
      const bool residual = method == "sharing-inter";
      CHECK(cfg["model_type"] == (residual ? "llama_moe_residual" : "llama_moe"));
      CHECK(cfg["num_experts"] == 8);
      CHECK(cfg["num_selects"] == 2);
      CHECK(cfg["gate_network"] == (method == "random" ? "mlp" : "linear"));
      CHECK(cfg["score_scale_factor"] == 4.0);  // N/k
      const nlohmann::json part = nlohmann::json::parse(slurp(out / "partition.json"));
      CHECK(part["method"] == method);
      REQUIRE(part["layers"].size() == 4);
      // Every non-MLP tensor is copied byte for byte; no dense MLP tensor remains.
      for (const std::string& name : dense.names()) {
        if (name.find(".mlp.") != std::string::npos) {
          CHECK_FALSE(moe_ck.contains(name));
          continue;
        }
        REQUIRE(moe_ck.contains(name));
        const TensorInfo& a = dense.info(name);
        const TensorInfo& b = moe_ck.info(name);
        CHECK(a.shape == b.shape);
        CHECK(std::memcmp(dense.file_of(name).bytes(name), moe_ck.file_of(name).bytes(name),
                          a.end - a.begin) == 0);
      }
      for (int l = 0; l < 4; ++l) {
        const auto sets = part["layers"][static_cast<std::size_t>(l)]["experts"]
                              .get<std::vector<std::vector<std::int32_t>>>();
        const ExpertPartition routed(688, sets);
        std::vector<std::vector<std::int32_t>> all = sets;
        if (residual) {
          const auto r = part["layers"][static_cast<std::size_t>(l)]["residual"]
                             .get<std::vector<std::vector<std::int32_t>>>();
          REQUIRE(r.size() == 1);
          all.insert(all.end(), r.begin(), r.end());
        }
        const ExpertPartition together(688, all);
        // The promises of each method.
        if (method != "sharing-inner") {
          CHECK(together.is_disjoint());
          CHECK(together.covers_all());
        }
        if (method == "random" || method == "clustering" || method == "coactivation" || method == "gradient")
          for (int e = 0; e < 8; ++e) CHECK(routed.expert_size(e) == 86);
        if (method == "sharing-inner")
          for (int e = 0; e < 8; ++e) CHECK(routed.expert_size(e) == 86);
        // The layer reloads; its experts are the dense neurons of partition.json (formula 3), and it
        // runs exactly like a layer sliced here with the router it carries.
        const MoELayer<float> got = load_llama_moe_layer(moe_ck, l);
        const FfnWeights<float> dw = llama_ffn_weights(dense, l);
        MoELayer<float> want(slice_experts<float>(dw.view(), routed), got.router(),
                             presets::llama_moe_gate(2, 4.0));
        if (residual)
          want.set_shared_experts(slice_experts<float>(
              dw.view(), ExpertPartition(688, part["layers"][static_cast<std::size_t>(l)]["residual"]
                                                  .get<std::vector<std::vector<std::int32_t>>>())));
        MoEWorkspace<float> ws;
        RowMatrix<float> y_got(16, 256), y_want(16, 256);
        got.forward(x, y_got, ws);
        want.forward(x, y_want, ws);
        CHECK(testutil::bitwise_equal(y_got, y_want));
      }
    }
  }
}

TEST_CASE("one expert holding every neuron, k = 1, scale 1 reproduces the dense model end to end", "[tool]") {
  // The MoE decoder path (written checkpoint read back in the dense model's place) against the
  // dense forward: the same FFN, so the printed errors are 0 and the losses agree.
  TempDir tmp;
  const std::string f = fixture_dir();
  REQUIRE(run({"--model", f, "--output", (tmp.path / "one").string(), "--experts", "1", "--top-k", "1",
               "--method", "random", "--scale", "1", "--calib", f + "/heldout.txt", "--calib-tokens", "512"},
              tmp.path / "log") == 0);
  const std::string printed = slurp(tmp.path / "log");
  INFO(printed);
  CHECK(printed.find("ffn rel.err 0.0000 (oracle routing 0.0000)  oracle recall 1.0000") !=
        std::string::npos);
  const auto dense_at = printed.find("dense "), moe_at = printed.find("MoE ");
  REQUIRE(dense_at != std::string::npos);
  REQUIRE(moe_at != std::string::npos);
  const double dense = std::stod(printed.substr(dense_at + 6)), moe = std::stod(printed.substr(moe_at + 4));
  CHECK(dense > 1.0);
  CHECK(moe == Approx(dense).margin(1e-4));
}

TEST_CASE("moe_convert refuses bad arguments with a message and leaves no output", "[tool]") {
  TempDir tmp;
  const std::string f = fixture_dir();
  const fs::path out = tmp.path / "out", log = tmp.path / "log";
  const std::vector<std::string> base = {"--model",   f,   "--output", out.string(),
                                         "--experts", "8", "--top-k",  "2"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  struct Bad {
    std::vector<std::string> args;
    int rc;
    const char* message;
  };
  const std::vector<Bad> cases = {
      {with({"--method", "kmeans"}), 2, "unknown method 'kmeans'"},
      {with({"--method", "random", "--residual", "2"}), 2, "--residual is used only by sharing-inter"},
      {with({"--method", "random", "--router", "oracle"}), 2, "unknown router 'oracle'"},
      {{"--model", f, "--output", out.string(), "--experts", "8", "--top-k", "9", "--method", "random"},
       1,
       "--top-k must be in [1, N=8], got 9"},
      {{"--model", f, "--output", out.string(), "--experts", "5", "--top-k", "2", "--method", "clustering"},
       1,
       "N=5 must divide d_h=688"},
      {with({"--method", "sharing-inner", "--calib", f + "/heldout.txt"}), 1, "--importance is needed"},
      {with({"--method", "gradient", "--importance", f + "/golden_ffn.safetensors"}), 1, "--calib is needed"},
      {with({"--method", "gradient", "--importance", f + "/model.safetensors", "--calib", f + "/heldout.txt",
             "--calib-tokens", "512"}),
       1, "must hold exactly one tensor named layer0.importance*"},
      {with({"--method", "coactivation", "--calib", f + "/heldout.txt", "--calib-tokens", "300"}), 1,
       "text calibration needs at least 512 bytes"},
      {{"--model", (tmp.path / "missing").string(), "--output", out.string(), "--experts", "8", "--top-k",
        "2", "--method", "random"},
       1,
       "cannot open"},
      {with({"--method", "random", "--experts", "8"}), 2, "given twice"},
  };
  for (const Bad& c : cases) {
    INFO(c.message);
    CHECK(run(c.args, log) == c.rc);
    CHECK(slurp(log).find(c.message) != std::string::npos);
    CHECK_FALSE(fs::exists(out));
  }
  // An existing output is never overwritten.
  fs::create_directories(out);
  std::ofstream(out / "keep") << "mine";
  CHECK(run(with({"--method", "random"}), log) == 1);
  CHECK(slurp(log).find("already exists") != std::string::npos);
  CHECK(slurp(out / "keep") == "mine");
}

TEST_CASE("moe_eval reproduces Hugging Face's loss and scores converted checkpoints", "[tool]") {
  TempDir tmp;
  const std::string f = fixture_dir(), text = f + "/heldout.txt";
  const SafeTensorsFile golden(f + "/golden_ffn.safetensors");
  // The golden loss is HF's mean over the 255 predictions of the first 256 held-out bytes.
  REQUIRE(run_tool("MOE_EVAL_TOOL", {"--model", f, "--text", text, "--max-bytes", "256"},
                   tmp.path / "dense") == 0);
  const std::string dense_log = slurp(tmp.path / "dense");
  INFO(dense_log);
  CHECK(dense_log.find("1 windows of 256 bytes, 255 predictions") != std::string::npos);
  CHECK(nats_per_byte(dense_log) == Approx(golden.vector<float>("loss")[0]).margin(1e-4));
  CHECK(dense_log.find("load:") == std::string::npos);

  // One expert of every neuron, k = 1, scale 1: the MoE checkpoint scores what the dense model does.
  REQUIRE(run({"--model", f, "--output", (tmp.path / "one").string(), "--experts", "1", "--top-k", "1",
               "--method", "random", "--scale", "1"},
              tmp.path / "log") == 0);
  REQUIRE(run_tool("MOE_EVAL_TOOL",
                   {"--model", (tmp.path / "one").string(), "--text", text, "--max-bytes", "1024"},
                   tmp.path / "one.log") == 0);
  REQUIRE(run_tool("MOE_EVAL_TOOL", {"--model", f, "--text", text, "--max-bytes", "1024"},
                   tmp.path / "d.log") == 0);
  CHECK(nats_per_byte(slurp(tmp.path / "one.log")) ==
        Approx(nats_per_byte(slurp(tmp.path / "d.log"))).margin(1e-5));
  CHECK(slurp(tmp.path / "one.log").find("layer 3 load: 1.000") != std::string::npos);

  // A real conversion evaluates, with the load of its 8 experts per layer.
  REQUIRE(run({"--model", f, "--output", (tmp.path / "eight").string(), "--experts", "8", "--top-k", "2",
               "--method", "clustering"},
              tmp.path / "log") == 0);
  REQUIRE(run_tool("MOE_EVAL_TOOL",
                   {"--model", (tmp.path / "eight").string(), "--text", text, "--max-bytes", "600",
                    "--context", "200"},
                   tmp.path / "eight.log") == 0);
  const std::string eight = slurp(tmp.path / "eight.log");
  INFO(eight);
  CHECK(eight.find("(llama_moe): 3 windows of 200 bytes, 597 predictions") != std::string::npos);
  CHECK(eight.find("layer 3 load:") != std::string::npos);
  CHECK(std::isfinite(nats_per_byte(eight)));

  // Its layers decode over the KV cache as the full forward computes them (MoE layers route one
  // token at a time there), and moe_generate runs it.
  {
    const LlamaModel moe_model{HfCheckpoint((tmp.path / "eight").string())};
    REQUIRE(moe_model.moe_layers().size() == 4);
    const std::string bytes = slurp(text).substr(0, 40);
    const std::vector<std::int32_t> ids(bytes.begin(), bytes.end());
    const RowMatrix<float> full = moe_model.forward(ids);
    LlamaCache cache = moe_model.make_cache(40);
    RowMatrix<float> steps(40, 256);
    steps.topRows(30) = moe_model.forward(std::vector<std::int32_t>(ids.begin(), ids.begin() + 30), cache);
    for (Index t = 30; t < 40; ++t) steps.row(t) = moe_model.forward({ids[std::size_t(t)]}, cache);
    CHECK(testutil::rel_err(steps, full) < 1e-5);
    CHECK(run_tool("MOE_GENERATE_TOOL",
                   {"--model", (tmp.path / "eight").string(), "--prompt", "And", "--tokens", "20"},
                   tmp.path / "gen.out", tmp.path / "gen.err") == 0);
    CHECK(slurp(tmp.path / "gen.out").size() == 23);
  }

  // The routing trace: one shaded cell per (byte, layer, slot), titled with the byte it routed,
  // and the loss as without it; any thread count gives the same bits.
  const fs::path svg = tmp.path / "trace.svg";
  REQUIRE(run_tool("MOE_EVAL_TOOL",
                   {"--model", (tmp.path / "eight").string(), "--text", text, "--max-bytes", "600",
                    "--context", "200", "--trace", svg.string(), "--trace-bytes", "30", "--threads", "1"},
                   tmp.path / "trace.log") == 0);
  const std::string traced = slurp(tmp.path / "trace.log"), picture = slurp(svg);
  CHECK(traced.find("wrote routing trace " + svg.string() + " (30 bytes x 4 layers x 8 experts)") !=
        std::string::npos);
  CHECK(nats_per_byte(traced) == nats_per_byte(eight));
  CHECK(traced.substr(traced.find("nats_per_byte")) == eight.substr(eight.find("nats_per_byte")));
  std::size_t cells = 0;
  for (auto at = picture.find("<title>byte "); at != std::string::npos;
       at = picture.find("<title>byte ", at + 1))
    ++cells;
  CHECK(cells == 30 * 4 * 2);
  CHECK(picture.find("<title>byte 29 layer 3 expert ") != std::string::npos);
  CHECK(picture.find("<title>byte 30 ") == std::string::npos);
  CHECK(picture.rfind("</svg>") != std::string::npos);
  // The first held-out bytes are labelled (spaces as an open box).
  const std::string first = slurp(text).substr(0, 2);
  CHECK(picture.find(">" + first.substr(0, 1) + "</text>") != std::string::npos);
}

TEST_CASE("moe_eval refuses bad checkpoints and arguments, naming the problem", "[tool]") {
  TempDir tmp;
  const std::string f = fixture_dir(), text = f + "/heldout.txt";
  REQUIRE(run({"--model", f, "--output", (tmp.path / "m").string(), "--experts", "4", "--top-k", "2",
               "--method", "random"},
              tmp.path / "log") == 0);
  const fs::path m = tmp.path / "m";
  auto eval = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"--model", m.string(), "--text", text, "--max-bytes", "256"};
    a.insert(a.end(), extra.begin(), extra.end());
    const int rc = run_tool("MOE_EVAL_TOOL", a, tmp.path / "eval.log");
    return std::make_pair(rc, slurp(tmp.path / "eval.log"));
  };
  nlohmann::json cfg = nlohmann::json::parse(slurp(m / "config.json"));
  auto write_config = [&](const nlohmann::json& c) { std::ofstream(m / "config.json") << c.dump(); };

  auto [rc, msg] = eval({"--context", "1"});
  CHECK(rc == 1);
  CHECK(msg.find("--context must be at least 2") != std::string::npos);
  std::tie(rc, msg) = eval({"--bogus", "1"});
  CHECK(rc == 2);
  CHECK(msg.find("unknown option '--bogus'") != std::string::npos);
  std::tie(rc, msg) = eval({"--trace-bytes", "5"});
  CHECK(rc == 2);
  CHECK(msg.find("--trace-bytes needs --trace") != std::string::npos);
  std::tie(rc, msg) = eval({"--trace", (tmp.path / "t.svg").string(), "--trace-bytes", "300"});
  CHECK(rc == 1);
  CHECK(msg.find("--trace-bytes must be in [1, --context = 256], got 300") != std::string::npos);
  std::tie(rc, msg) = eval({"--threads", "-2"});
  CHECK(rc == 1);
  CHECK(msg.find("--threads must be in [0, 1024]") != std::string::npos);
  std::tie(rc, msg) = eval({"--trace", (tmp.path / "no" / "such" / "dir.svg").string()});
  CHECK(rc == 1);
  CHECK(msg.find("cannot write trace") != std::string::npos);
  {
    const int dense_rc = run_tool(
        "MOE_EVAL_TOOL",
        {"--model", f, "--text", text, "--max-bytes", "256", "--trace", (tmp.path / "t.svg").string()},
        tmp.path / "dense.log");
    CHECK(dense_rc == 1);
    CHECK(slurp(tmp.path / "dense.log").find("is a dense model") != std::string::npos);
  }

  nlohmann::json c = cfg;
  c["model_type"] = "mixtral";
  write_config(c);
  std::tie(rc, msg) = eval({});
  CHECK(rc == 1);
  CHECK(msg.find("model_type 'mixtral' is not llama, llama_moe or llama_moe_residual") != std::string::npos);

  c = cfg;
  c["size_experts"][2][1] = 100;  // shape mismatch with the stored expert
  write_config(c);
  std::tie(rc, msg) = eval({});
  CHECK(rc == 1);
  CHECK(
      msg.find(
          "model.layers.2.mlp.calculator.experts.weight_gate.1' has shape [172, 256], expected [100, 256]") !=
      std::string::npos);

  c = cfg;
  c["num_experts"] = 5;  // a missing tensor
  c["size_experts"] = std::vector<std::vector<int>>(4, std::vector<int>(5, 172));
  write_config(c);
  std::tie(rc, msg) = eval({});
  CHECK(rc == 1);
  CHECK(msg.find("has no tensor 'model.layers.0.mlp.calculator.experts.weight_gate.4'") != std::string::npos);
}

TEST_CASE("moe_generate: greedy decoding over the KV cache is the full forward's argmax; sampling is seeded",
          "[tool]") {
  TempDir tmp;
  const std::string f = fixture_dir(), prompt = "In the beginning";
  auto generate = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"--model", f, "--prompt", prompt};
    a.insert(a.end(), extra.begin(), extra.end());
    const int rc = run_tool("MOE_GENERATE_TOOL", a, tmp.path / "out", tmp.path / "err");
    INFO(slurp(tmp.path / "err"));
    CHECK(rc == 0);
    return slurp(tmp.path / "out");
  };
  const std::string greedy = generate({"--tokens", "60"});
  REQUIRE(greedy.size() == prompt.size() + 60);
  CHECK(greedy.compare(0, prompt.size(), prompt) == 0);
  CHECK(slurp(tmp.path / "err").find("generation 59 tokens in") != std::string::npos);
  CHECK(slurp(tmp.path / "err").find("tokens/s") != std::string::npos);

  // Every generated byte is the argmax of the full (uncached) forward's logits at the position
  // before it. Near-ties (top two within 1e-3, where cache and full forward may round apart) are
  // not judged; the assertion counts how many positions were.
  const LlamaModel model{HfCheckpoint(f)};
  std::vector<std::int32_t> ids;
  for (const char c : greedy) ids.push_back(static_cast<unsigned char>(c));
  const RowMatrix<float> logits = model.forward(ids);
  int judged = 0;
  for (std::size_t t = prompt.size(); t < ids.size(); ++t) {
    Eigen::RowVectorXf z = logits.row(static_cast<Index>(t) - 1);
    Index best = 0;
    const float top = z.maxCoeff(&best);
    z(best) = -INFINITY;
    if (top - z.maxCoeff() < 1e-3f) continue;
    ++judged;
    CHECK(ids[t] == best);
  }
  CHECK(judged >= 55);

  // Temperature 0 ignores the seed; a top-p nucleus too small for a second byte is greedy too.
  CHECK(generate({"--tokens", "60", "--seed", "9"}) == greedy);
  CHECK(generate({"--tokens", "60", "--temperature", "1", "--top-p", "1e-9", "--seed", "4"}) == greedy);
  // Sampling: the same seed repeats itself, another seed differs.
  const std::string a = generate({"--tokens", "80", "--temperature", "1", "--seed", "1"});
  CHECK(a.size() == prompt.size() + 80);
  CHECK(generate({"--tokens", "80", "--temperature", "1", "--seed", "1"}) == a);
  CHECK(generate({"--tokens", "80", "--temperature", "1", "--seed", "2"}) != a);
  CHECK(a != greedy.substr(0, a.size()));

  // Past max_position_embeddings (512) the context slides and generation goes on.
  const std::string longer = generate({"--tokens", "700", "--temperature", "0.7", "--seed", "3"});
  CHECK(longer.size() == prompt.size() + 700);
  CHECK(slurp(tmp.path / "err").find("context slid 1 times") != std::string::npos);
}

TEST_CASE("moe_generate refuses bad arguments, naming the problem", "[tool]") {
  TempDir tmp;
  const std::string f = fixture_dir();
  auto generate = [&](std::vector<std::string> a) {
    const int rc = run_tool("MOE_GENERATE_TOOL", a, tmp.path / "log");
    return std::make_pair(rc, slurp(tmp.path / "log"));
  };
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--model", f, "--prompt", "x", "--tokens", "0"}, "--tokens must be in [1, 1000000], got 0"},
      {{"--model", f, "--prompt", "x", "--tokens", "ten"}, "--tokens expects an integer, got 'ten'"},
      {{"--model", f, "--prompt", "x", "--tokens", "5", "--temperature", "-1"}, "--temperature must be >= 0"},
      {{"--model", f, "--prompt", "x", "--tokens", "5", "--temperature", "nan"},
       "--temperature expects a finite number"},
      {{"--model", f, "--prompt", "x", "--tokens", "5", "--top-p", "0"}, "--top-p must be in (0, 1], got 0"},
      {{"--model", f, "--prompt", "x", "--tokens", "5", "--top-p", "1.5"},
       "--top-p must be in (0, 1], got 1.5"},
      {{"--model", f, "--prompt", "x", "--tokens", "5", "--seed", "-3"}, "--seed must be >= 0"},
      {{"--model", f, "--prompt", "", "--tokens", "5"}, "--prompt must not be empty"},
      {{"--model", (tmp.path / "nowhere").string(), "--prompt", "x", "--tokens", "5"}, "nowhere"},
  };
  for (const auto& [args, want] : cases) {
    const auto [rc, msg] = generate(args);
    INFO(msg);
    CHECK(rc == 1);
    CHECK(msg.find(want) != std::string::npos);
  }
  auto [rc, msg] = generate({"--model", f, "--prompt", "x"});
  CHECK(rc == 2);
  CHECK(msg.find("missing --tokens") != std::string::npos);
  std::tie(rc, msg) = generate({"--model", f, "--prompt", "x", "--tokens", "3", "--top-k", "3"});
  CHECK(rc == 2);
  CHECK(msg.find("unknown option '--top-k'") != std::string::npos);
}
