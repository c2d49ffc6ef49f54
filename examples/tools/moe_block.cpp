// moe_block — run one Hugging Face MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2,
// DeepSeek-V3 / GLM-4-MoE, Llama 4, GPT-OSS, DBRX) on given inputs.
//
// usage: moe_block --config CONFIG.json --weights WEIGHTS.safetensors --prefix PREFIX
//                  --input IN.safetensors --output OUT.safetensors [--threads N]
//
// CONFIG.json is the model's config.json (model_type picks the family; a multimodal config's
// text_config is used). WEIGHTS holds the block's tensors under PREFIX with the Hub's names
// (e.g. PREFIX = "model.layers.3.mlp."). IN holds x [T, d]; OUT gets y [T, d] (F32),
// topk_ids [T, k] (I32; -1 never occurs: no family here has a capacity) and topk_weights [T, k] (F32,
// the router's weights before any output scale). Prints a one-line summary and the load.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <moe/moe.hpp>
#include <nlohmann/json.hpp>
#include <string>

using namespace moe;

namespace {

constexpr const char* kUsage =
    "usage: moe_block --config CONFIG.json --weights WEIGHTS.safetensors --prefix PREFIX "
    "--input IN.safetensors --output OUT.safetensors [--threads N]\n";

int usage(const char* why) {
  std::fprintf(stderr, "moe_block: %s\n%s", why, kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt = {{"--prefix", ""}, {"--threads", "1"}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a != "--config" && a != "--weights" && a != "--prefix" && a != "--input" && a != "--output" &&
        a != "--threads")
      return usage(("unknown option '" + a + "'").c_str());
    if (i + 1 >= argc) return usage(("option " + a + " needs a value").c_str());
    opt[a] = argv[++i];
  }
  for (const char* required : {"--config", "--weights", "--input", "--output"})
    if (!opt.count(required)) return usage((std::string("missing ") + required).c_str());
  try {
    std::ifstream cf(opt["--config"]);
    MOE_CHECK(cf, "cannot open config '" << opt["--config"] << "'");
    nlohmann::json config;
    try {
      config = nlohmann::json::parse(cf);
    } catch (const nlohmann::json::exception& e) {
      MOE_CHECK(false, "config '" << opt["--config"] << "' is not valid JSON: " << e.what());
    }
    char* end = nullptr;
    const long threads = std::strtol(opt["--threads"].c_str(), &end, 10);
    MOE_CHECK(*end == '\0' && threads >= 1 && threads <= 256,
              "--threads needs an integer in [1, 256], got '" << opt["--threads"] << "'");

    const SafeTensorsFile weights(opt["--weights"]);
    const MoELayer<float> layer = load_hf_moe_block(config, weights, opt["--prefix"]);
    const SafeTensorsFile input(opt["--input"]);
    const TensorInfo& xi = input.info("x");
    MOE_CHECK(xi.shape.size() == 2 && xi.shape[1] == layer.model_dim(),
              "input 'x' must be [T, " << layer.model_dim() << "], got " << xi.shape.size() << " dimensions"
                                       << (xi.shape.size() == 2 ? " [" + std::to_string(xi.shape[0]) + ", " +
                                                                      std::to_string(xi.shape[1]) + "]"
                                                                : std::string()));
    const std::vector<float> xv = input.to_float("x");
    const Eigen::Map<const RowMatrix<float>> x(xv.data(), xi.shape[0], xi.shape[1]);

    RowMatrix<float> y(x.rows(), x.cols());
    MoEWorkspace<float> ws;
    RoutingRecord<float> record;
    ThreadPool pool(static_cast<int>(threads));
    layer.forward(x, y, ws, threads > 1 ? &pool : nullptr, &record);

    SafeTensorsWriter out;
    out.add("y", y);
    out.add("topk_ids", record.expert_ids);
    out.add("topk_weights", record.weights);
    out.set_metadata("model_type", config.value("model_type", std::string()));
    out.write(opt["--output"]);

    std::printf("moe_block: %lld tokens, d=%lld, N=%d, k=%d, shared experts: %zu -> %s\n",
                static_cast<long long>(x.rows()), static_cast<long long>(x.cols()), layer.num_experts(),
                layer.top_k(), layer.shared_experts().size(), opt["--output"].c_str());
    std::printf("tokens per expert:");
    for (const Index c : record.stats.tokens_per_expert) std::printf(" %lld", static_cast<long long>(c));
    std::printf("\nCV² load %.4f, CV² importance %.4f, aux loss %.4f, z-loss %.4f, entropy %.4f nats\n",
                record.stats.cv2_tokens, record.stats.cv2_importance, record.stats.aux_loss,
                record.stats.z_loss, record.stats.entropy);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_block: %s\n", e.what());
    return 1;
  }
  return 0;
}
