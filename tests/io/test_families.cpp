// Every MoE family through load_hf_moe_block (and, tagged [tool], through the moe_block
// executable) from Hub-named tensors, against the double reference in reference/families.hpp.
#include <unistd.h>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <moe/core/detail/half.hpp>
#include <moe/io/hf_moe_block.hpp>
#include <moe/io/safetensors_writer.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "reference/families.hpp"
#include "test_util.hpp"

using namespace moe;
using nlohmann::json;
namespace fam = ref::families;
namespace fs = std::filesystem;

namespace {

constexpr Index kD = 32, kM = 16, kTokens = 37;

/// The value a float takes once stored as `dt` (so the reference uses exactly the file's values).
double stored(double v, Dtype dt) {
  const auto f = static_cast<float>(v);
  if (dt == Dtype::BF16) return moe::detail::bf16_to_float(moe::detail::float_to_bf16(f));
  if (dt == Dtype::F16) return moe::detail::f16_to_float(moe::detail::float_to_f16(f));
  return f;
}

fam::Mat random_stored(Index rows, Index cols, std::uint64_t seed, double sd, Dtype dt) {
  fam::Mat m = testutil::random_matrix<fam::Mat>(rows, cols, seed, sd);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = stored(m.data()[i], dt);
  return m;
}

fam::Expert random_expert(Index m, std::uint64_t seed, double sd, Dtype dt, bool biases = false) {
  fam::Expert e{random_stored(kD, m, seed, sd, dt),
                random_stored(kD, m, seed + 1, sd, dt),
                random_stored(m, kD, seed + 2, 1.0 / std::sqrt(double(m)), dt),
                {},
                {},
                {}};
  if (biases) {
    e.gate_bias = random_stored(m, 1, seed + 3, 0.5, dt);
    e.up_bias = random_stored(m, 1, seed + 4, 0.5, dt);
    e.down_bias = random_stored(kD, 1, seed + 5, 0.5, dt);
  }
  return e;
}

/// Writes `rows x cols` (row-major order of `m`) under `name` with `shape` (default {rows, cols}).
void put(SafeTensorsWriter& w, const std::string& name, const fam::Mat& m, Dtype dt,
         std::vector<std::int64_t> shape = {}) {
  const RowMatrix<float> rm = m.cast<float>();
  if (shape.empty()) shape = {rm.rows(), rm.cols()};
  w.add_float(name, dt, std::move(shape), rm.data(), static_cast<std::size_t>(rm.size()));
}
/// A linear layer in HF's [out, in] layout from the math-orientation in x out matrix.
void put_linear(SafeTensorsWriter& w, const std::string& name, const fam::Mat& math, Dtype dt) {
  put(w, name, math.transpose(), dt);
}

/// An expert's three HF linears under `prefix` + {gate,up,down} names + ".weight".
void put_ffn(SafeTensorsWriter& w, const std::string& prefix, const char* gate, const char* up,
             const char* down, const fam::Expert& e, Dtype dt) {
  put_linear(w, prefix + gate + ".weight", e.gate, dt);
  put_linear(w, prefix + up + ".weight", e.up, dt);
  put_linear(w, prefix + down + ".weight", e.down, dt);
}

struct Case {
  std::string name;
  json config;
  std::string prefix;
  Dtype dtype;
  fam::Block block;
  SafeTensorsWriter tensors;
};

/// Builds the block, its config.json and its Hub-named tensors for one family.
Case make_case(const std::string& family, Dtype dt, std::uint64_t seed, int variant = 0) {
  Case c;
  c.name = family + (variant ? " (variant " + std::to_string(variant) + ")" : "");
  c.dtype = dt;
  fam::Block& b = c.block;
  json& cfg = c.config;
  SafeTensorsWriter& w = c.tensors;
  c.prefix = "model.layers.1.mlp.";
  int n = 8;
  b.family = family == "glm4_moe" ? "deepseek_v3" : family;
  cfg["model_type"] = family;
  cfg["hidden_size"] = kD;
  double expert_sd = 0.5;
  if (family == "mixtral") {
    b.k = 2;
    cfg["num_local_experts"] = n;
    cfg["num_experts_per_tok"] = b.k;
    cfg["intermediate_size"] = kM;
    c.prefix = "model.layers.1.block_sparse_moe.";
  } else if (family == "qwen2_moe" || family == "qwen3_moe" || family == "olmoe") {
    b.k = family == "qwen2_moe" ? 4 : 2;
    b.norm_topk = family == "qwen3_moe";
    cfg["num_experts"] = n;
    cfg["num_experts_per_tok"] = b.k;
    cfg[family == "olmoe" ? "intermediate_size" : "moe_intermediate_size"] = kM;
    cfg["norm_topk_prob"] = b.norm_topk;
    if (family == "qwen2_moe") cfg["shared_expert_intermediate_size"] = 24;
  } else if (family == "deepseek_v2") {
    n = variant ? 16 : 8;
    b.k = variant ? 4 : 3;
    b.grouped = variant != 0;
    b.n_group = 4;
    b.topk_group = 2;
    b.norm_topk = variant != 0;
    b.rsf = 16.0;
    cfg["n_routed_experts"] = n;
    cfg["num_experts_per_tok"] = b.k;
    cfg["moe_intermediate_size"] = kM;
    cfg["topk_method"] = b.grouped ? "group_limited_greedy" : "greedy";
    cfg["n_group"] = b.n_group;
    cfg["topk_group"] = b.topk_group;
    cfg["routed_scaling_factor"] = b.rsf;
    cfg["norm_topk_prob"] = b.norm_topk;
    cfg["n_shared_experts"] = 1;
  } else if (family == "deepseek_v3" || family == "glm4_moe") {
    n = 16;
    b.k = 4;
    b.n_group = 4;
    b.topk_group = 2;
    b.norm_topk = family == "deepseek_v3";
    b.rsf = 2.5;
    cfg["n_routed_experts"] = n;
    cfg["num_experts_per_tok"] = b.k;
    cfg["moe_intermediate_size"] = kM;
    cfg["n_group"] = b.n_group;
    cfg["topk_group"] = b.topk_group;
    cfg["routed_scaling_factor"] = b.rsf;
    cfg["norm_topk_prob"] = b.norm_topk;
    cfg["n_shared_experts"] = 2;
    cfg["topk_method"] = "noaux_tc";
    cfg["scoring_func"] = "sigmoid";
  } else if (family == "llama4_text") {
    b.family = "llama4";
    b.k = 2;
    json text = cfg;
    text["num_local_experts"] = n;
    text["num_experts_per_tok"] = b.k;
    text["intermediate_size"] = kM;
    text["intermediate_size_mlp"] = 4 * kM;
    cfg = json{{"model_type", "llama4"}, {"text_config", text}, {"vision_config", {{"hidden_size", 8}}}};
    c.prefix = "language_model.model.layers.1.feed_forward.";
  } else if (family == "gpt_oss") {
    b.k = 4;
    b.limit = 7.0;
    expert_sd = 1.2;  // pre-activations reach past the clamp limit
    cfg["num_local_experts"] = n;
    cfg["num_experts_per_tok"] = b.k;
    cfg["experts_per_token"] = b.k;
    cfg["intermediate_size"] = kM;
    cfg["swiglu_limit"] = b.limit;
  } else if (family == "dbrx") {
    b.k = 4;
    b.p = variant ? 2.0 : 1.0;
    cfg.erase("hidden_size");
    cfg["d_model"] = kD;
    cfg["ffn_config"] = {{"moe_num_experts", n},
                         {"moe_top_k", b.k},
                         {"ffn_hidden_size", kM},
                         {"moe_normalize_expert_weights", b.p},
                         {"ffn_act_fn", {{"name", "silu"}}}};
    c.prefix = "transformer.blocks.1.ffn.";
  }
  for (int e = 0; e < n; ++e)
    b.experts.push_back(random_expert(kM, seed + 10 * static_cast<std::uint64_t>(e),
                                      expert_sd / std::sqrt(double(kD)) * 3, dt, family == "gpt_oss"));
  b.router = random_stored(kD, n, seed + 1000, 1.5 / std::sqrt(double(kD)), dt);
  const std::string& pf = c.prefix;

  if (family == "mixtral") {
    put_linear(w, pf + "gate.weight", b.router, dt);
    for (int e = 0; e < n; ++e)
      put_ffn(w, pf + "experts." + std::to_string(e) + ".", "w1", "w3", "w2",
              b.experts[static_cast<std::size_t>(e)], dt);
  } else if (family == "llama4_text" || family == "gpt_oss") {
    const bool gpt = family == "gpt_oss";
    put_linear(w, pf + "router.weight", b.router, dt);
    if (gpt) {
      b.router_bias = random_stored(n, 1, seed + 2000, 0.5, dt);
      put(w, pf + "router.bias", b.router_bias, dt, {n});
    }
    fam::Mat gate_up(n * kD, 2 * kM), down(n * kM, kD), gub(n, 2 * kM), db(n, kD);
    for (int e = 0; e < n; ++e) {
      const auto& x = b.experts[static_cast<std::size_t>(e)];
      for (Index j = 0; j < kM; ++j) {
        for (Index i = 0; i < kD; ++i) {
          gate_up(e * kD + i, gpt ? 2 * j : j) = x.gate(i, j);
          gate_up(e * kD + i, gpt ? 2 * j + 1 : kM + j) = x.up(i, j);
        }
        if (gpt) {
          gub(e, 2 * j) = x.gate_bias(j);
          gub(e, 2 * j + 1) = x.up_bias(j);
        }
      }
      down.middleRows(e * kM, kM) = x.down;
      if (gpt) db.row(e) = x.down_bias.transpose();
    }
    put(w, pf + "experts.gate_up_proj", gate_up, dt, {n, kD, 2 * kM});
    put(w, pf + "experts.down_proj", down, dt, {n, kM, kD});
    if (gpt) {
      put(w, pf + "experts.gate_up_proj_bias", gub, dt);
      put(w, pf + "experts.down_proj_bias", db, dt);
    } else {
      b.shared.push_back(random_expert(kM, seed + 3000, 0.5, dt));
      put_ffn(w, pf + "shared_expert.", "gate_proj", "up_proj", "down_proj", b.shared[0], dt);
    }
  } else if (family == "dbrx") {
    put_linear(w, pf + "router.layer.weight", b.router, dt);
    fam::Mat w1(n * kM, kD), v1(n * kM, kD), w2(n * kM, kD);
    for (int e = 0; e < n; ++e) {
      const auto& x = b.experts[static_cast<std::size_t>(e)];
      w1.middleRows(e * kM, kM) = x.gate.transpose();
      v1.middleRows(e * kM, kM) = x.up.transpose();
      w2.middleRows(e * kM, kM) = x.down;
    }
    put(w, pf + "experts.mlp.w1", w1, dt);
    put(w, pf + "experts.mlp.v1", v1, dt);
    put(w, pf + "experts.mlp.w2", w2, dt);
  } else {  // qwen / olmoe / deepseek naming
    put_linear(w, pf + "gate.weight", b.router, dt);
    for (int e = 0; e < n; ++e)
      put_ffn(w, pf + "experts." + std::to_string(e) + ".", "gate_proj", "up_proj", "down_proj",
              b.experts[static_cast<std::size_t>(e)], dt);
    std::string shared_name;
    Index ms = 0;
    if (family == "qwen2_moe") shared_name = "shared_expert.", ms = 24;
    if (b.family == "deepseek_v2" || b.family == "deepseek_v3")
      shared_name = "shared_experts.", ms = kM * cfg["n_shared_experts"].get<int>();
    if (!shared_name.empty()) {
      b.shared.push_back(random_expert(ms, seed + 3000, 0.5, dt));
      put_ffn(w, pf + shared_name, "gate_proj", "up_proj", "down_proj", b.shared[0], dt);
    }
    if (family == "qwen2_moe") {
      b.shared_gate = random_stored(kD, 1, seed + 4000, 0.3, dt);
      put(w, pf + "shared_expert_gate.weight", b.shared_gate.transpose(), dt);
    }
    if (b.family == "deepseek_v3") {
      // F32 in real checkpoints; large enough to change the choice for many tokens.
      b.correction = random_stored(n, 1, seed + 5000, 0.3, Dtype::F32);
      put(w, pf + "gate.e_score_correction_bias", b.correction, Dtype::F32, {n});
    }
  }
  // Unrelated tensors around the block, as in a real checkpoint.
  put(w, "model.embed_tokens.weight", fam::Mat::Ones(4, kD), dt);
  return c;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  cases.push_back(make_case("mixtral", Dtype::F32, 100));
  cases.push_back(make_case("qwen2_moe", Dtype::BF16, 200));
  cases.push_back(make_case("qwen3_moe", Dtype::F16, 300));
  cases.push_back(make_case("olmoe", Dtype::F32, 400));
  cases.push_back(make_case("deepseek_v2", Dtype::BF16, 500));
  cases.push_back(make_case("deepseek_v2", Dtype::F32, 600, 1));
  cases.push_back(make_case("deepseek_v3", Dtype::BF16, 700));
  cases.push_back(make_case("glm4_moe", Dtype::F32, 800));
  cases.push_back(make_case("llama4_text", Dtype::BF16, 900));
  cases.push_back(make_case("gpt_oss", Dtype::BF16, 1000));
  cases.push_back(make_case("dbrx", Dtype::F32, 1100));
  cases.push_back(make_case("dbrx", Dtype::F16, 1200, 1));
  return cases;
}

/// A per-process scratch directory, removed at exit.
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("moe_families_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

RowMatrix<float> input_x(std::uint64_t seed) {
  return testutil::random_matrix<RowMatrix<float>>(kTokens, kD, seed, 1.0);
}

void check_against_reference(const Case& c, const RowMatrix<float>& y, const IdMatrix& ids,
                             const RowMatrix<float>& weights, const RowMatrix<float>& x) {
  std::vector<fam::Routed> routes;
  long clamped = 0;
  const fam::Mat y_ref = fam::forward(c.block, x.cast<double>(), &routes, &clamped);
  INFO(c.name);
  CHECK(testutil::rel_err(y, y_ref) < 1e-5);
  REQUIRE(ids.cols() == c.block.k);
  double wmax = 0, werr = 0;
  for (Index t = 0; t < kTokens; ++t)
    for (int s = 0; s < c.block.k; ++s) {
      INFO("token " << t << " slot " << s);
      CHECK(ids(t, s) == routes[static_cast<std::size_t>(t)].ids[static_cast<std::size_t>(s)]);
      const double wr = routes[static_cast<std::size_t>(t)].w[static_cast<std::size_t>(s)];
      wmax = std::max(wmax, std::abs(wr));
      werr = std::max(werr, std::abs(weights(t, s) - wr));
    }
  CHECK(werr / wmax < 1e-6);
  if (c.block.family == "gpt_oss") CHECK(clamped > 0);  // the clamp was exercised
}

}  // namespace

TEST_CASE("Every MoE family from Hub-named tensors matches its double reference", "[families]") {
  TempDir dir;
  for (Case& c : all_cases()) {
    SECTION(c.name) {
      const std::string wpath = (dir.path / "w.safetensors").string();
      c.tensors.write(wpath);
      const SafeTensorsFile file(wpath);
      const MoELayer<float> layer = load_hf_moe_block(c.config, file, c.prefix);
      CHECK(layer.shared_experts().size() == c.block.shared.size());
      const RowMatrix<float> x = input_x(42);
      RowMatrix<float> y(kTokens, kD);
      MoEWorkspace<float> ws;
      RoutingRecord<float> rec;
      layer.forward(x, y, ws, nullptr, &rec);
      check_against_reference(c, y, rec.expert_ids, rec.weights, x);
      // Bitwise the same with a thread pool.
      ThreadPool pool(3);
      RowMatrix<float> y3(kTokens, kD);
      layer.forward(x, y3, ws, &pool);
      CHECK(testutil::bitwise_equal(y, y3));
    }
  }
}

TEST_CASE("DeepSeek-V3's correction bias changes the choice but not the weights", "[families]") {
  Case c = make_case("deepseek_v3", Dtype::F32, 700);
  fam::Block unbiased = c.block;
  unbiased.correction.setZero();
  const RowMatrix<float> x = input_x(42);
  std::vector<fam::Routed> with, without;
  fam::forward(c.block, x.cast<double>(), &with);
  fam::forward(unbiased, x.cast<double>(), &without);
  int changed = 0;
  for (std::size_t t = 0; t < with.size(); ++t) changed += with[t].ids != without[t].ids;
  CHECK(changed > 0);  // the test data exercises the bias
}

TEST_CASE("load_hf_moe_block names what is wrong", "[families]") {
  TempDir dir;
  Case c = make_case("mixtral", Dtype::F32, 100);
  const std::string wpath = (dir.path / "w.safetensors").string();
  c.tensors.write(wpath);
  const SafeTensorsFile file(wpath);

  json cfg = c.config;
  cfg["model_type"] = "gpt2";
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, file, c.prefix),
                    Catch::Contains("model_type 'gpt2' is not a supported MoE family"));
  cfg = c.config;
  cfg.erase("num_local_experts");
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, file, c.prefix),
                    Catch::Contains("missing required key 'num_local_experts'"));
  cfg = c.config;
  cfg["num_experts_per_tok"] = "two";
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, file, c.prefix), Catch::Contains("'num_experts_per_tok' must be"));
  cfg = c.config;
  cfg["num_experts_per_tok"] = 9;
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, file, c.prefix), Catch::Contains("k=9 must be in [1, N=8]"));
  CHECK_THROWS_WITH(load_hf_moe_block(c.config, file, "model.layers.2.block_sparse_moe."),
                    Catch::Contains("missing tensor 'model.layers.2.block_sparse_moe.gate.weight'"));
  cfg = c.config;
  cfg["intermediate_size"] = kM + 1;
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, file, c.prefix),
                    Catch::Contains("experts.0.w1.weight' has shape [16, 32], expected [17, 32]"));
  cfg = c.config;
  cfg["num_local_experts"] = 9;
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, file, c.prefix),
                    Catch::Contains("has shape [8, 32], expected [9, 32]"));

  Case v3 = make_case("deepseek_v3", Dtype::F32, 700);
  cfg = v3.config;
  cfg.erase("n_group");
  const std::string v3path = (dir.path / "v3.safetensors").string();
  v3.tensors.write(v3path);
  const SafeTensorsFile v3file(v3path);
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, v3file, v3.prefix),
                    Catch::Contains("missing required key 'n_group'"));
  cfg = v3.config;
  cfg["topk_group"] = 5;
  CHECK_THROWS_WITH(load_hf_moe_block(cfg, v3file, v3.prefix), Catch::Contains("topk_group=5"));
}

// ---- the moe_block executable (registered by tests/CMakeLists.txt with MOE_BLOCK_TOOL) ----

namespace {

int run_tool(const std::vector<std::string>& args, const fs::path& log) {
  const char* tool = std::getenv("MOE_BLOCK_TOOL");
  REQUIRE(tool != nullptr);
  std::string cmd = std::string("'") + tool + "'";
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " > '" + log.string() + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST_CASE("moe_block round-trips every family through files", "[tool]") {
  TempDir dir;
  for (Case& c : all_cases()) {
    SECTION(c.name) {
      const fs::path wpath = dir.path / "weights.safetensors", cpath = dir.path / "config.json",
                     in = dir.path / "in.safetensors", out = dir.path / "out.safetensors",
                     log = dir.path / "log";
      c.tensors.write(wpath.string());
      std::ofstream(cpath) << c.config.dump(2);
      const RowMatrix<float> x = input_x(43);
      SafeTensorsWriter xin;
      // The input in the checkpoint's dtype, as a user would dump it; the reference sees the same values.
      RowMatrix<float> xs = x;
      for (Index i = 0; i < xs.size(); ++i) xs.data()[i] = static_cast<float>(stored(xs.data()[i], c.dtype));
      xin.add_float("x", c.dtype, {kTokens, kD}, xs.data(), static_cast<std::size_t>(xs.size()));
      xin.write(in.string());
      REQUIRE(run_tool({"--config", cpath.string(), "--weights", wpath.string(), "--prefix", c.prefix,
                        "--input", in.string(), "--output", out.string(), "--threads", "2"},
                       log) == 0);
      INFO(slurp(log));
      const SafeTensorsFile o(out.string());
      CHECK(o.info("y").dtype == Dtype::F32);
      CHECK(o.info("topk_ids").dtype == Dtype::I32);
      CHECK(o.info("topk_ids").shape == std::vector<std::int64_t>{kTokens, c.block.k});
      check_against_reference(c, o.matrix<float>("y"), o.matrix<std::int32_t>("topk_ids"),
                              o.matrix<float>("topk_weights"), xs);
    }
  }
}

TEST_CASE("moe_block reports bad input with a message and exit code 1", "[tool]") {
  TempDir dir;
  Case c = make_case("qwen3_moe", Dtype::F32, 300);
  const fs::path wpath = dir.path / "weights.safetensors", cpath = dir.path / "config.json",
                 in = dir.path / "in.safetensors", out = dir.path / "out.safetensors", log = dir.path / "log";
  c.tensors.write(wpath.string());
  std::ofstream(cpath) << c.config.dump();
  SafeTensorsWriter xin;
  xin.add("x", input_x(1).leftCols(kD - 1).eval());  // wrong width
  xin.write(in.string());
  const std::vector<std::string> base = {"--config", cpath.string(), "--weights", wpath.string(),
                                         "--input",  in.string(),    "--output",  out.string()};
  auto with_prefix = base;
  with_prefix.insert(with_prefix.end(), {"--prefix", c.prefix});
  CHECK(run_tool(with_prefix, log) == 1);
  CHECK_THAT(slurp(log), Catch::Contains("input 'x' must be [T, 32]"));
  CHECK(run_tool(base, log) == 1);  // no prefix: tensors not found
  CHECK_THAT(slurp(log), Catch::Contains("missing tensor 'gate.weight'"));
  CHECK(run_tool({"--config", cpath.string()}, log) == 2);
  CHECK_THAT(slurp(log), Catch::Contains("missing --weights"));
  std::ofstream(cpath) << "{ not json";
  CHECK(run_tool(with_prefix, log) == 1);
  CHECK_THAT(slurp(log), Catch::Contains("is not valid JSON"));
  CHECK_FALSE(fs::exists(out));
}
