// LLaMA-MoE checkpoints: a small dense LLaMA written by the test (single file and shards), its
// experts sliced into LLaMA-MoE's layout bit for bit (formula 3), and the layer read back and run.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <moe/construction/expert_construction.hpp>
#include <moe/construction/router_init.hpp>
#include <moe/construction/slicing.hpp>
#include <moe/io/llama_moe_checkpoint.hpp>

#include "test_util.hpp"

using namespace moe;
using testutil::random_matrix;
namespace fs = std::filesystem;

namespace {

constexpr Index kD = 8, kDh = 12;

struct TempDir {
  fs::path path;
  TempDir() : path(fs::temp_directory_path() / ("moe_ckpt_test_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

nlohmann::json dense_config() {
  return {{"model_type", "llama"},  {"hidden_size", kD},        {"intermediate_size", kDh},
          {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"vocab_size", 16}};
}

/// Writes a dense checkpoint's MLP tensors (and one other tensor) in `dtype`; shards: gate/up in
/// one file, down and the rest in another, with an index.
void write_dense(const fs::path& dir, Dtype dtype, bool shards) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << dense_config().dump();
  SafeTensorsWriter a, b;
  for (int l = 0; l < 2; ++l)
    for (const char* p : {"gate_proj", "up_proj", "down_proj"}) {
      const bool down = std::string(p) == "down_proj";
      const RowMatrix<float> w = random_matrix<RowMatrix<float>>(
          down ? kD : kDh, down ? kDh : kD, static_cast<std::uint64_t>(10 * l) + p[0], 0.5);
      SafeTensorsWriter& into = shards && down ? b : a;
      into.add_float(detail::llama_mlp_name(l, p), dtype, {w.rows(), w.cols()}, w.data(),
                     static_cast<std::size_t>(w.size()));
    }
  const Eigen::VectorXf norm = Eigen::VectorXf::LinSpaced(kD, 0.5f, 1.5f);
  (shards ? b : a).add_float("model.norm.weight", dtype, {kD}, norm.data(), kD);
  if (!shards) return a.write((dir / "model.safetensors").string());
  a.write((dir / "model-00001-of-00002.safetensors").string());
  b.write((dir / "model-00002-of-00002.safetensors").string());
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  for (int l = 0; l < 2; ++l) {
    index["weight_map"][detail::llama_mlp_name(l, "gate_proj")] = "model-00001-of-00002.safetensors";
    index["weight_map"][detail::llama_mlp_name(l, "up_proj")] = "model-00001-of-00002.safetensors";
    index["weight_map"][detail::llama_mlp_name(l, "down_proj")] = "model-00002-of-00002.safetensors";
  }
  index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();
}

/// Converts `dense_dir` with the given partitions and routers into `out_dir` (what moe_convert writes).
void convert(const HfCheckpoint& dense, const fs::path& out_dir, const std::vector<ExpertPartition>& routed,
             const std::vector<ExpertPartition>& residual, const std::vector<RouterGate<float>>& gates, int k,
             double scale) {
  fs::create_directories(out_dir);
  SafeTensorsWriter w;
  std::vector<std::vector<Index>> sizes, rsizes;
  for (int l = 0; l < 2; ++l) {
    const ExpertPartition* res = residual.empty() ? nullptr : &residual[static_cast<std::size_t>(l)];
    add_llama_moe_experts(w, dense, l, routed[static_cast<std::size_t>(l)], res);
    add_llama_moe_gate(w, l, gates[static_cast<std::size_t>(l)], res != nullptr);
    std::vector<Index> s;
    for (int e = 0; e < routed[static_cast<std::size_t>(l)].num_experts(); ++e)
      s.push_back(routed[static_cast<std::size_t>(l)].expert_size(e));
    sizes.push_back(s);
    if (res) {
      std::vector<Index> r;
      for (int e = 0; e < res->num_experts(); ++e) r.push_back(res->expert_size(e));
      rsizes.push_back(r);
    }
  }
  w.write((out_dir / "model.safetensors").string());
  const std::string net = gates[0].mlp_out.size() ? "mlp" : "linear";
  std::ofstream(out_dir / "config.json")
      << llama_moe_config(dense.config(), k, sizes, rsizes, net, scale).dump();
}

}  // namespace

TEST_CASE("a sharded checkpoint resolves every tensor to its shard; a wrong index is refused",
          "[checkpoint]") {
  TempDir tmp;
  write_dense(tmp.path / "dense", Dtype::F32, true);
  const HfCheckpoint ck((tmp.path / "dense").string());
  CHECK(ck.names().size() == 7);
  CHECK(ck.file_of("model.layers.1.mlp.down_proj.weight").path().find("00002") != std::string::npos);
  CHECK(ck.info("model.layers.0.mlp.up_proj.weight").shape == std::vector<std::int64_t>{kDh, kD});
  CHECK_THROWS_WITH(ck.file_of("lm_head.weight"), Catch::Contains("has no tensor 'lm_head.weight'"));
  nlohmann::json index;
  std::ifstream(tmp.path / "dense" / "model.safetensors.index.json") >> index;
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
  std::ofstream(tmp.path / "dense" / "model.safetensors.index.json") << index.dump();
  CHECK_THROWS_WITH(HfCheckpoint((tmp.path / "dense").string()),
                    Catch::Contains("puts tensor 'model.norm.weight' in 'model-00001-of-00002.safetensors'"));
  CHECK_THROWS_WITH(HfCheckpoint((tmp.path / "nowhere").string()), Catch::Contains("config.json"));
}

TEST_CASE("LLaMA-MoE checkpoint: experts are dense rows bit for bit, and the layer reloads and runs",
          "[checkpoint]") {
  for (const Dtype dtype : {Dtype::F32, Dtype::BF16}) {
    for (const bool shards : {false, true}) {
      TempDir tmp;
      write_dense(tmp.path / "dense", dtype, shards);
      const HfCheckpoint dense((tmp.path / "dense").string());
      std::vector<ExpertPartition> routed;
      std::vector<RouterGate<float>> gates;
      for (int l = 0; l < 2; ++l) {
        routed.push_back(ExpertPartition::independent_random(kDh, 4, static_cast<std::uint64_t>(l)));
        // One gate network per model (config gate_network): the MLP gate with F32, linear with BF16.
        gates.push_back(dtype == Dtype::F32 ? random_router(kD, 4, 3 + static_cast<std::uint64_t>(l))
                                            : RouterGate<float>(random_matrix<ColMatrix<float>>(
                                                  kD, 4, 9 + static_cast<std::uint64_t>(l))));
      }
      convert(dense, tmp.path / "moe", routed, {}, gates, 2, 1.5);
      const HfCheckpoint moe_ck((tmp.path / "moe").string());
      CHECK(moe_ck.config()["model_type"] == "llama_moe");
      CHECK(moe_ck.config()["num_experts"] == 4);
      CHECK(moe_ck.config()["num_selects"] == 2);
      CHECK(moe_ck.config()["gate_network"] == (dtype == Dtype::F32 ? "mlp" : "linear"));
      CHECK(moe_ck.config()["size_experts"][1] == std::vector<int>{3, 3, 3, 3});

      // Formula (3) on the bytes: expert row i of weight_gate is dense row S_e[i], in the dense dtype.
      const std::string g0 = "model.layers.1.mlp.calculator.experts.weight_gate.2";
      const std::string dn0 = "model.layers.1.mlp.calculator.experts.weight_down.2";
      CHECK(moe_ck.info(g0).dtype == dtype);
      const std::size_t es = dtype_size(dtype);
      const auto& s = routed[1].expert(2);
      for (std::size_t i = 0; i < s.size(); ++i) {
        CHECK(std::memcmp(moe_ck.file_of(g0).bytes(g0) + i * kD * es,
                          dense.file_of(detail::llama_mlp_name(1, "gate_proj"))
                                  .bytes(detail::llama_mlp_name(1, "gate_proj")) +
                              static_cast<std::size_t>(s[i]) * kD * es,
                          kD * es) == 0);
        for (Index r = 0; r < kD; ++r)
          CHECK(
              std::memcmp(moe_ck.file_of(dn0).bytes(dn0) + (static_cast<std::size_t>(r) * s.size() + i) * es,
                          dense.file_of(detail::llama_mlp_name(1, "down_proj"))
                                  .bytes(detail::llama_mlp_name(1, "down_proj")) +
                              (static_cast<std::size_t>(r) * kDh + static_cast<std::size_t>(s[i])) * es,
                          es) == 0);
      }

      // Both layers reload and reproduce the MoE built directly from the dense weights.
      const RowMatrix<float> x = random_matrix<RowMatrix<float>>(9, kD, 5);
      for (int l = 0; l < 2; ++l) {
        const FfnWeights<float> dw = llama_ffn_weights(dense, l);
        const MoELayer<float> want(slice_experts<float>(dw.view(), routed[static_cast<std::size_t>(l)]),
                                   gates[static_cast<std::size_t>(l)], presets::llama_moe_gate(2, 1.5));
        const MoELayer<float> got = load_llama_moe_layer(moe_ck, l);
        CHECK(got.scale() == 1.5);
        CHECK(got.router().mlp_out.size() == (dtype == Dtype::F32 ? 16 : 0));
        MoEWorkspace<float> ws;
        RowMatrix<float> y_want(9, kD), y_got(9, kD);
        want.forward(x, y_want, ws);
        got.forward(x, y_got, ws);
        CHECK(testutil::bitwise_equal(y_got, y_want));
      }
    }
  }
}

TEST_CASE("LLaMA-MoE residual checkpoint: residual experts under residual_block, added to every token",
          "[checkpoint]") {
  TempDir tmp;
  write_dense(tmp.path / "dense", Dtype::F32, false);
  const HfCheckpoint dense((tmp.path / "dense").string());
  const Eigen::MatrixXd imp = random_matrix<Eigen::MatrixXd>(3, kDh, 4).cwiseAbs();
  const ResidualPartition rp = sharing_inter(imp, 1, 3);
  convert(dense, tmp.path / "moe", {rp.routed, rp.routed}, {rp.residual, rp.residual},
          {random_router(kD, 3, 1), random_router(kD, 3, 2)}, 1, 3.0);
  const HfCheckpoint ck((tmp.path / "moe").string());
  CHECK(ck.config()["model_type"] == "llama_moe_residual");
  CHECK(ck.config()["num_experts_residual"] == 1);
  CHECK(ck.config()["intermediate_size_moe"] == 9);
  CHECK(ck.contains("model.layers.0.mlp.residual_block.calculator.experts.weight_up.0"));
  CHECK(ck.contains("model.layers.0.mlp.moe_layer.calculator.experts.weight_up.2"));
  CHECK(ck.contains("model.layers.0.mlp.moe_layer.gate.gate_network.2.weight"));
  const MoELayer<float> got = load_llama_moe_layer(ck, 1);
  REQUIRE(got.shared_experts().size() == 1);
  // y = 3 · (the routed expert, weight 1 with k = 1) + residual expert, against the dense slices.
  const FfnWeights<float> dw = llama_ffn_weights(dense, 1);
  MoELayer<float> want(slice_experts<float>(dw.view(), rp.routed), random_router(kD, 3, 2),
                       presets::llama_moe_gate(1, 3.0));
  want.set_shared_experts(slice_experts<float>(dw.view(), rp.residual));
  const RowMatrix<float> x = random_matrix<RowMatrix<float>>(7, kD, 6);
  MoEWorkspace<float> ws;
  RowMatrix<float> y_want(7, kD), y_got(7, kD);
  want.forward(x, y_want, ws);
  got.forward(x, y_got, ws);
  CHECK(testutil::bitwise_equal(y_got, y_want));
  // The residual expert really contributes: without it the outputs differ.
  MoELayer<float> no_res(slice_experts<float>(dw.view(), rp.routed), random_router(kD, 3, 2),
                         presets::llama_moe_gate(1, 3.0));
  RowMatrix<float> y_nores(7, kD);
  no_res.forward(x, y_nores, ws);
  CHECK(testutil::rel_err(y_nores, y_got) > 1e-3);
}

TEST_CASE("LLaMA-MoE loader refuses what it cannot reproduce, naming the key", "[checkpoint]") {
  TempDir tmp;
  write_dense(tmp.path / "dense", Dtype::F32, false);
  const HfCheckpoint dense((tmp.path / "dense").string());
  const std::vector<ExpertPartition> parts(2, ExpertPartition::independent_random(kDh, 4, 0));
  convert(dense, tmp.path / "moe", parts, {}, {random_router(kD, 4, 1), random_router(kD, 4, 2)}, 2, 2.0);
  auto with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json c;
    std::ifstream(tmp.path / "moe" / "config.json") >> c;
    c[key] = value;
    std::ofstream(tmp.path / "moe" / "config.json") << c.dump();
  };
  CHECK_THROWS_WITH(load_llama_moe_layer(HfCheckpoint((tmp.path / "moe").string()), 2),
                    Catch::Contains("layer 2 outside [0, 2)"));
  with("gate_use_softmax", false);
  CHECK_THROWS_WITH(load_llama_moe_layer(HfCheckpoint((tmp.path / "moe").string()), 0),
                    Catch::Contains("gate_use_softmax"));
  with("gate_use_softmax", true);
  with("size_experts", {{3, 3, 3, 3}});
  CHECK_THROWS_WITH(load_llama_moe_layer(HfCheckpoint((tmp.path / "moe").string()), 0),
                    Catch::Contains("'size_experts' must list one array of sizes per layer"));
  with("size_experts", {{3, 3, 3, 4}, {3, 3, 3, 3}});
  CHECK_THROWS_WITH(load_llama_moe_layer(HfCheckpoint((tmp.path / "moe").string()), 0),
                    Catch::Contains("weight_gate.3' has shape [3, 8], expected [4, 8]"));
  with("model_type", "llama");
  CHECK_THROWS_WITH(load_llama_moe_layer(HfCheckpoint((tmp.path / "moe").string()), 0),
                    Catch::Contains("model_type 'llama' is not llama_moe"));
}
