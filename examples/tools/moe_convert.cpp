// moe_convert — build a LLaMA-MoE checkpoint from a dense Hugging Face LLaMA (LLaMA-MoE §2.2):
// split every FFN into experts with one of six methods, initialise a router without training,
// report how close each MoE FFN stays to the dense one, and write LLaMA-MoE's layout.
//
// usage: see kUsage below. The output directory appears only once complete (written under a
// temporary name beside it, then renamed); an existing output is never overwritten.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <moe/construction/expert_construction.hpp>
#include <moe/construction/importance.hpp>
#include <moe/construction/router_init.hpp>
#include <moe/construction/slicing.hpp>
#include <moe/io/llama_moe_checkpoint.hpp>
#include <moe/model/llama_model.hpp>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "tool_util.hpp"

using namespace moe;
using moe::tool::parse_int;
using moe::tool::Progress;
namespace fs = std::filesystem;

namespace {

constexpr const char* kUsage =
    "usage: moe_convert --model DIR --output DIR --experts N --top-k K --method M\n"
    "                   [--seed S] [--expert-size m] [--residual R] [--importance FILE]\n"
    "                   [--calib FILE] [--calib-tokens T] [--router random|centroid|fit]\n"
    "                   [--scale F|auto]\n"
    "  M: random | clustering | sharing-inner | sharing-inter | coactivation | gradient\n"
    "  --calib FILE: text (byte-level models: bytes are token ids) run through the model, or a\n"
    "      .safetensors file with layer{i}.mlp_in [T, d]; the first 3/4 of the tokens build the\n"
    "      experts and router, the last 1/4 measure them. Needed by sharing-*, gradient,\n"
    "      coactivation and --router fit; without it no error or recall is printed.\n"
    "  --importance FILE: safetensors with layer{i}.importance* ([d_h], or [N, d_h] per cluster);\n"
    "      needed by sharing-inner, sharing-inter and gradient.\n"
    "  --scale: LLaMA-MoE's score_scale_factor (default N/k, formula 6); auto: the least-squares\n"
    "      scale of the routed output on the calibration tokens.\n";

int usage(const std::string& why) {
  std::fprintf(stderr, "moe_convert: %s\n%s", why.c_str(), kUsage);
  return 2;
}

/// Calibration tokens: each layer's FFN inputs, split into the rows that build the experts and
/// router (the first fit_rows) and the rest that measure them; with text, the measuring rows are
/// whole windows, kept for the next-byte loss.
struct Calibration {
  std::vector<RowMatrix<float>> x;  ///< per layer, T x d
  Index fit_rows = 0;
  std::vector<std::vector<std::int32_t>> eval_windows;  ///< text only
  bool empty() const { return x.empty(); }
  Index eval_rows() const { return x[0].rows() - fit_rows; }
  RowMatrix<float> fit(int layer) const { return x[static_cast<std::size_t>(layer)].topRows(fit_rows); }
  RowMatrix<float> eval(int layer) const {
    return x[static_cast<std::size_t>(layer)].bottomRows(eval_rows());
  }
};

/// From a safetensors file of layer{i}.mlp_in tensors (the last quarter of the rows measures), or
/// from text run through the model (byte-level models; windows of 256 bytes, each from position 0
/// as in training; the last quarter of the windows, at least one, measures).
Calibration calibration_inputs(const HfCheckpoint& ckpt, const LlamaConfig& cfg, const std::string& path,
                               Index max_tokens) {
  Calibration c;
  c.x.resize(static_cast<std::size_t>(cfg.layers));
  if (path.size() >= 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0) {
    const SafeTensorsFile f(path);
    for (int i = 0; i < cfg.layers; ++i) {
      const std::string name = "layer" + std::to_string(i) + ".mlp_in";
      MOE_CHECK(f.contains(name), "calibration file '" << path << "' has no tensor '" << name << "'");
      const TensorInfo& t = f.info(name);
      MOE_CHECK(t.shape.size() == 2 && t.shape[1] == cfg.hidden && t.shape[0] >= 8,
                "calibration tensor '" << name << "' must be [T >= 8, " << cfg.hidden << "]");
      MOE_CHECK(
          i == 0 || t.shape[0] == c.x[0].rows() || std::min<Index>(t.shape[0], max_tokens) == c.x[0].rows(),
          "calibration tensors must all have the same number of tokens");
      const std::vector<float> v = f.to_float(name);
      const Index rows = std::min<Index>(t.shape[0], max_tokens);
      c.x[static_cast<std::size_t>(i)] =
          Eigen::Map<const RowMatrix<float>>(v.data(), t.shape[0], cfg.hidden).topRows(rows);
    }
    c.fit_rows = c.x[0].rows() - c.x[0].rows() / 4;
    return c;
  }
  MOE_CHECK(cfg.vocab == 256,
            "text calibration needs a byte-level model (vocab_size 256, token = byte); this one has "
                << cfg.vocab << " tokens: give layer{i}.mlp_in tensors in a .safetensors file");
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in, "cannot open calibration file '" << path << "'");
  std::vector<std::int32_t> bytes;
  for (char ch; static_cast<Index>(bytes.size()) < max_tokens && in.get(ch);)
    bytes.push_back(static_cast<std::int32_t>(static_cast<unsigned char>(ch)));
  constexpr std::size_t kWindow = 256;
  MOE_CHECK(bytes.size() >= 2 * kWindow, "text calibration needs at least 512 bytes (two windows of 256), '"
                                             << path << "' gives " << bytes.size());
  const LlamaModel model(ckpt);
  const int windows = static_cast<int>(bytes.size() / kWindow);  // whole windows only
  const int eval_windows = std::max(1, windows / 4);
  const Progress bar("calibration forward", windows);
  for (int w = 0; w < windows; ++w) {
    const auto begin = static_cast<std::ptrdiff_t>(static_cast<std::size_t>(w) * kWindow);
    const std::vector<std::int32_t> ids(bytes.begin() + begin,
                                        bytes.begin() + begin + static_cast<std::ptrdiff_t>(kWindow));
    std::vector<RowMatrix<float>> mlp_in;
    model.forward(ids, &mlp_in);
    for (int i = 0; i < cfg.layers; ++i) {
      auto& all = c.x[static_cast<std::size_t>(i)];
      const Index at = all.rows();
      all.conservativeResize(at + static_cast<Index>(kWindow), cfg.hidden);
      all.bottomRows(static_cast<Index>(kWindow)) = mlp_in[static_cast<std::size_t>(i)];
    }
    if (w >= windows - eval_windows) c.eval_windows.push_back(ids);
    bar.step(w + 1, "window " + std::to_string(w + 1));
  }
  c.fit_rows = static_cast<Index>(windows - eval_windows) * static_cast<Index>(kWindow);
  return c;
}

/// Layer i's importance: [N, d_h] per cluster as given, or a [d_h] vector split over the
/// calibration clusters by activation mass.
Eigen::MatrixXd layer_importance(const SafeTensorsFile& f, int layer, int n, Index dh,
                                 const RowMatrix<float>& h, const std::vector<int>& cluster) {
  const std::string prefix = "layer" + std::to_string(layer) + ".importance";
  std::vector<std::string> found;
  for (const std::string& name : f.names())
    if (name.compare(0, prefix.size(), prefix) == 0) found.push_back(name);
  MOE_CHECK(found.size() == 1, "importance file '" << f.path() << "' must hold exactly one tensor named "
                                                   << prefix << "*, found " << found.size());
  const TensorInfo& t = f.info(found[0]);
  const std::vector<float> v = f.to_float(found[0]);
  if (t.shape.size() == 1 && t.shape[0] == dh)
    return split_importance_by_activation<float>(
        Eigen::Map<const Eigen::VectorXf>(v.data(), dh).cast<double>(), h, cluster, n);
  MOE_CHECK(t.shape.size() == 2 && t.shape[0] == n && t.shape[1] == dh,
            "importance tensor '" << found[0] << "' must be [" << dh << "] or [" << n << ", " << dh << "]");
  return Eigen::Map<const RowMatrix<float>>(v.data(), n, dh).cast<double>();
}

RowMatrix<float> ffn_hidden(const FfnWeights<float>& w, const RowMatrix<float>& x) {
  const RowMatrix<float> g = x * w.gate;
  return g.unaryExpr([](float z) { return silu(z); }).cwiseProduct(x * w.up);
}

struct LayerReport {
  double rel_error = -1, recall = -1, oracle_error = -1, partition_objective = 0;
  std::vector<double> load;
};

}  // namespace

int main(int argc, char** argv) {
  const std::set<std::string> flags = {
      "--model",    "--output",     "--experts", "--top-k",  "--method", "--seed",        "--expert-size",
      "--residual", "--importance", "--calib",   "--router", "--scale",  "--calib-tokens"};
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
  for (const char* required : {"--model", "--output", "--experts", "--top-k", "--method"})
    if (!opt.count(required)) return usage(std::string("missing ") + required);
  const std::string method = opt["--method"];
  const std::set<std::string> methods = {"random",        "clustering",   "sharing-inner",
                                         "sharing-inter", "coactivation", "gradient"};
  if (!methods.count(method))
    return usage("unknown method '" + method +
                 "' (random, clustering, sharing-inner, sharing-inter, coactivation, gradient)");
  const std::string router = opt.count("--router") ? opt["--router"] : "random";
  if (router != "random" && router != "centroid" && router != "fit")
    return usage("unknown router '" + router + "' (random, centroid, fit)");
  const bool uses_importance = method == "sharing-inner" || method == "sharing-inter" || method == "gradient";
  if (opt.count("--importance") && !uses_importance)
    return usage("--importance is used only by sharing-inner, sharing-inter and gradient");
  if (opt.count("--expert-size") && method != "sharing-inner" && method != "sharing-inter")
    return usage("--expert-size is used only by sharing-inner and sharing-inter");
  if (opt.count("--residual") && method != "sharing-inter")
    return usage("--residual is used only by sharing-inter");

  try {
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t n64 = parse_int("--experts", opt["--experts"]),
                       k64 = parse_int("--top-k", opt["--top-k"]);
    const auto seed =
        static_cast<std::uint64_t>(opt.count("--seed") ? parse_int("--seed", opt["--seed"]) : 0);
    MOE_CHECK(n64 >= 1 && n64 <= 4096, "--experts must be in [1, 4096], got " << n64);
    MOE_CHECK(k64 >= 1 && k64 <= n64, "--top-k must be in [1, N=" << n64 << "], got " << k64);
    const int n = static_cast<int>(n64), k = static_cast<int>(k64);
    const Index max_tokens =
        opt.count("--calib-tokens") ? parse_int("--calib-tokens", opt["--calib-tokens"]) : 4096;
    MOE_CHECK(max_tokens >= 8, "--calib-tokens must be at least 8");
    const fs::path out_dir = opt["--output"];
    MOE_CHECK(!fs::exists(out_dir),
              "output '" << out_dir.string() << "' already exists; remove it or pick another");

    const HfCheckpoint ckpt(opt["--model"]);
    MOE_CHECK(ckpt.config().value("model_type", std::string()) == "llama",
              "'" << opt["--model"] << "/config.json' is not a LLaMA model (model_type '"
                  << ckpt.config().value("model_type", std::string()) << "')");
    const LlamaConfig cfg = LlamaConfig::from_json(ckpt.config());
    const Index dh = cfg.intermediate, d = cfg.hidden;
    if (method == "clustering" || method == "coactivation")
      MOE_CHECK(dh % n == 0,
                "method " << method << " makes equal experts: N=" << n << " must divide d_h=" << dh);
    MOE_CHECK(dh >= n, "cannot split d_h=" << dh << " neurons into N=" << n << " experts");
    const int residual_r =
        opt.count("--residual") ? static_cast<int>(parse_int("--residual", opt["--residual"])) : 1;
    Index expert_size = 0;
    if (method == "sharing-inner") expert_size = dh / n;
    if (method == "sharing-inter") expert_size = dh / (n + residual_r);
    if (opt.count("--expert-size")) expert_size = parse_int("--expert-size", opt["--expert-size"]);
    if (method == "sharing-inner")
      MOE_CHECK(expert_size >= 1 && expert_size <= dh, "--expert-size must be in [1, d_h=" << dh << "]");
    if (method == "sharing-inter") {
      MOE_CHECK(residual_r >= 1, "--residual must be at least 1");
      MOE_CHECK(expert_size >= 1 && residual_r * expert_size + n <= dh,
                "--residual " << residual_r << " x --expert-size " << expert_size << " leaves fewer than N="
                              << n << " of d_h=" << dh << " neurons for the routed experts");
    }
    const bool needs_calib = uses_importance || method == "coactivation" || router == "fit";
    MOE_CHECK(!needs_calib || opt.count("--calib"),
              "--calib is needed by method " << method << (router == "fit" ? " / --router fit" : ""));
    MOE_CHECK(!uses_importance || opt.count("--importance"), "--importance is needed by method " << method);
    MOE_CHECK(opt.count("--scale") == 0 || opt["--scale"] != "auto" || opt.count("--calib"),
              "--scale auto needs --calib");
    std::unique_ptr<SafeTensorsFile> importance_file;
    if (opt.count("--importance")) importance_file = std::make_unique<SafeTensorsFile>(opt["--importance"]);
    for (int i = 0; i < cfg.layers; ++i)
      for (const char* p : {"gate_proj", "up_proj", "down_proj"})
        (void)ckpt.info(detail::llama_mlp_name(i, p));

    Calibration calib;
    if (opt.count("--calib")) calib = calibration_inputs(ckpt, cfg, opt["--calib"], max_tokens);
    const bool have_calib = !calib.empty();

    // Build every layer.
    SafeTensorsWriter writer;
    std::vector<std::vector<Index>> sizes, residual_sizes;
    nlohmann::json partition_json = nlohmann::json::array();
    std::vector<LayerReport> reports(static_cast<std::size_t>(cfg.layers));
    std::vector<MoELayer<float>> layers;
    std::vector<FfnWeights<float>> dense_layers;
    const Progress bar("building experts", cfg.layers);
    for (int i = 0; i < cfg.layers; ++i) {
      bar.step(i, "layer " + std::to_string(i) + ": " + method);
      const FfnWeights<float> dense = llama_ffn_weights(ckpt, i);
      RowMatrix<float> x_fit, h_fit;
      if (have_calib) {
        x_fit = calib.fit(i);
        h_fit = ffn_hidden(dense, x_fit);
      }
      std::vector<int> cluster;  // data clusters of the fit tokens (importance methods)
      if (uses_importance) {
        RowMatrix<double> xn = x_fit.cast<double>();
        for (Index t = 0; t < xn.rows(); ++t)
          if (xn.row(t).norm() > 0) xn.row(t).normalize();
        cluster = kmeans(xn, n, seed).labels;
      }
      Eigen::MatrixXd imp;
      if (uses_importance) imp = layer_importance(*importance_file, i, n, dh, h_fit, cluster);

      std::unique_ptr<ExpertPartition> routed, residual;
      LayerReport& rep = reports[static_cast<std::size_t>(i)];
      if (method == "random") {
        routed = std::make_unique<ExpertPartition>(
            ExpertPartition::independent_random(dh, n, seed + static_cast<std::uint64_t>(i)));
      } else if (method == "clustering") {
        ConstructedPartition c = independent_clustering<float>(dense.up, n, seed);
        rep.partition_objective = c.objective;
        routed = std::make_unique<ExpertPartition>(std::move(c.partition));
      } else if (method == "coactivation") {
        ConstructedPartition c = coactivation_partition<float>(h_fit, n, seed);
        rep.partition_objective = c.objective;
        routed = std::make_unique<ExpertPartition>(std::move(c.partition));
      } else if (method == "sharing-inner") {
        routed = std::make_unique<ExpertPartition>(sharing_inner(imp, expert_size));
      } else if (method == "gradient") {
        routed = std::make_unique<ExpertPartition>(gradient_partition(imp));
      } else {
        ResidualPartition rp = sharing_inter(imp, residual_r, expert_size);
        routed = std::make_unique<ExpertPartition>(std::move(rp.routed));
        residual = std::make_unique<ExpertPartition>(std::move(rp.residual));
      }

      RouterGate<float> gate;
      if (router == "random")
        gate = random_router(d, n, seed + 1000003ULL * static_cast<std::uint64_t>(i + 1));
      if (router == "centroid") gate = RouterGate<float>(centroid_router<float>(dense.up, *routed));
      if (router == "fit")
        gate = RouterGate<float>(fit_router<float>(x_fit, expert_activation_mass<float>(h_fit, *routed)));
      if (router != "random") gate.noise = ColMatrix<float>::Zero(d, n);

      std::vector<Index> s;
      for (int e = 0; e < n; ++e) s.push_back(routed->expert_size(e));
      sizes.push_back(s);
      nlohmann::json pj = {{"layer", i}, {"experts", nlohmann::json::array()}};
      for (int e = 0; e < n; ++e) pj["experts"].push_back(routed->expert(e));
      if (residual) {
        std::vector<Index> rs;
        pj["residual"] = nlohmann::json::array();
        for (int r = 0; r < residual->num_experts(); ++r) {
          rs.push_back(residual->expert_size(r));
          pj["residual"].push_back(residual->expert(r));
        }
        residual_sizes.push_back(rs);
      }
      partition_json.push_back(pj);
      add_llama_moe_experts(writer, ckpt, i, *routed, residual.get());
      add_llama_moe_gate(writer, i, gate, residual != nullptr);

      MoELayer<float> layer(slice_experts<float>(dense.view(), *routed), gate,
                            presets::llama_moe_gate(k, 1.0));
      if (residual) layer.set_shared_experts(slice_experts<float>(dense.view(), *residual));
      layers.push_back(std::move(layer));
      dense_layers.push_back(dense);
    }
    bar.step(cfg.layers, "done");

    // The output scale, then the measurements on the held-out quarter of the calibration tokens.
    double scale = static_cast<double>(n) / k;
    if (opt.count("--scale") && opt["--scale"] != "auto") {
      char* end = nullptr;
      scale = std::strtod(opt["--scale"].c_str(), &end);
      MOE_CHECK(*end == '\0' && std::isfinite(scale) && scale > 0,
                "--scale must be a positive number or auto");
    }
    auto routed_and_dense = [&](int i, bool fit_part, RowMatrix<float>& routed_y, RowMatrix<float>& shared_y,
                                RowMatrix<float>& dense_y, RoutingRecord<float>* rec) {
      const RowMatrix<float> xs = fit_part ? calib.fit(i) : calib.eval(i);
      const MoELayer<float>& l = layers[static_cast<std::size_t>(i)];
      MoEWorkspace<float> ws;
      RowMatrix<float> y(xs.rows(), d);
      l.forward(xs, y, ws, nullptr, rec);  // scale 1: y = Σ w·E + residual
      shared_y = RowMatrix<float>::Zero(xs.rows(), d);
      if (!l.shared_experts().empty())
        for (const auto& e : l.shared_experts()) shared_y += ffn_hidden(e, xs) * e.down;
      routed_y = y - shared_y;
      dense_y = ffn_hidden(dense_layers[static_cast<std::size_t>(i)], xs) *
                dense_layers[static_cast<std::size_t>(i)].down;
    };
    if (have_calib && opt.count("--scale") && opt["--scale"] == "auto") {
      double num = 0, den = 0;  // min_s Σ_layers ||s·routed + shared − dense||²
      for (int i = 0; i < cfg.layers; ++i) {
        RowMatrix<float> r, sh, dn;
        routed_and_dense(i, true, r, sh, dn, nullptr);
        num += static_cast<double>((dn - sh).cwiseProduct(r).sum());
        den += static_cast<double>(r.squaredNorm());
      }
      MOE_CHECK(den > 0 && num > 0,
                "--scale auto: the routed output is zero or anti-correlated with the dense one");
      scale = num / den;
    }
    if (have_calib) {
      for (int i = 0; i < cfg.layers; ++i) {
        RowMatrix<float> r, sh, dn;
        RoutingRecord<float> rec;
        routed_and_dense(i, false, r, sh, dn, &rec);
        LayerReport& rep = reports[static_cast<std::size_t>(i)];
        rep.rel_error = static_cast<double>((static_cast<float>(scale) * r + sh - dn).norm() / dn.norm());
        const RowMatrix<float> xe = calib.eval(i);
        RowMatrix<float> logits(xe.rows(), n);
        GateScratch<float> gs;
        gate_logits<float>(layers[static_cast<std::size_t>(i)].router(), RouterOptions{}, xe, logits, gs);
        const ExpertPartition routed_part(dh, partition_json[static_cast<std::size_t>(i)]["experts"]
                                                  .get<std::vector<std::vector<std::int32_t>>>());
        const RowMatrix<double> mass = expert_activation_mass<float>(
            ffn_hidden(dense_layers[static_cast<std::size_t>(i)], xe), routed_part);
        rep.recall = oracle_top_k_recall(logits, mass, k);
        // The oracle: each token's k experts with the most activation mass, weight 1 each, no
        // scale — the error a perfect router would leave with this partition.
        IdMatrix ids(xe.rows(), k);
        std::vector<double> scratch(static_cast<std::size_t>(k));
        for (Index t = 0; t < xe.rows(); ++t) {
          const Eigen::RowVectorXd m = mass.row(t);
          top_k(m.data(), n, k, ids.row(t).data(), scratch.data());
        }
        MoEWorkspace<float> ws;
        RowMatrix<float> y_oracle(xe.rows(), d);
        layers[static_cast<std::size_t>(i)].forward_routed(xe, ids, RowMatrix<float>::Ones(xe.rows(), k),
                                                           y_oracle, ws);
        rep.oracle_error = static_cast<double>((y_oracle - dn).norm() / dn.norm());
        for (const Index c : rec.tokens_per_expert)
          rep.load.push_back(static_cast<double>(c) / static_cast<double>(xe.rows() * k));
      }
    }

    // Print the report.
    std::printf(
        "moe_convert: %s -> %s: %d layers, d=%lld, d_h=%lld, N=%d, k=%d, method %s, router %s, scale %.4g\n",
        opt["--model"].c_str(), out_dir.string().c_str(), cfg.layers, static_cast<long long>(d),
        static_cast<long long>(dh), n, k, method.c_str(), router.c_str(), scale);
    if (!have_calib) std::printf("  (no --calib: FFN error, oracle recall and load not measured)\n");
    if (have_calib)
      std::printf("  measured on %lld held-out calibration tokens per layer\n",
                  static_cast<long long>(calib.eval_rows()));
    for (int i = 0; i < cfg.layers; ++i) {
      const LayerReport& rep = reports[static_cast<std::size_t>(i)];
      std::printf("  layer %d:", i);
      if (method == "clustering") std::printf(" k-means objective %.4g", rep.partition_objective);
      if (method == "coactivation") std::printf(" cut weight %.4f", rep.partition_objective);
      if (have_calib) {
        std::printf(" ffn rel.err %.4f (oracle routing %.4f)  oracle recall %.4f  load", rep.rel_error,
                    rep.oracle_error, rep.recall);
        for (const double l : rep.load) std::printf(" %.3f", l);
      }
      std::printf("\n");
    }

    // Copy every other tensor unchanged, then write the directory under a temporary name.
    for (const std::string& name : ckpt.names()) {
      if (name.find(".mlp.") != std::string::npos) continue;
      const TensorInfo& t = ckpt.info(name);
      writer.add_bytes(name, t.dtype, t.shape, ckpt.file_of(name).bytes(name), t.end - t.begin);
    }
    const fs::path tmp = out_dir.string() + ".tmp." + std::to_string(::getpid());
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    try {
      writer.set_metadata("format", "pt");
      writer.write((tmp / "model.safetensors").string());
      const nlohmann::json config = llama_moe_config(ckpt.config(), k, sizes, residual_sizes,
                                                     router == "random" ? "mlp" : "linear", scale);
      std::ofstream(tmp / "config.json") << config.dump(2) << "\n";
      nlohmann::json pjson = {{"method", method},        {"seed", seed},
                              {"num_experts", n},        {"top_k", k},
                              {"router", router},        {"score_scale_factor", scale},
                              {"layers", partition_json}};
      if (method == "sharing-inter") pjson["num_experts_residual"] = residual_r;
      std::ofstream pf(tmp / "partition.json");
      pf << pjson.dump() << "\n";
      MOE_CHECK(pf.good(), "cannot write '" << (tmp / "partition.json").string() << "'");
      pf.close();
      for (const char* extra : {"generation_config.json"})
        if (fs::exists(fs::path(opt["--model"]) / extra))
          fs::copy_file(fs::path(opt["--model"]) / extra, tmp / extra);
      if (!calib.eval_windows.empty()) {
        // The written checkpoint, read back as a whole model: next-byte loss on the held-out
        // windows, dense vs MoE (bits/byte = nats / ln 2).
        const LlamaModel dense_model(ckpt), moe_model{HfCheckpoint(tmp.string())};
        double dense_loss = 0, moe_loss = 0;
        for (const auto& ids : calib.eval_windows) {
          dense_loss += next_token_loss(dense_model.forward(ids), ids);
          moe_loss += next_token_loss(moe_model.forward(ids), ids);
        }
        const double w = static_cast<double>(calib.eval_windows.size()) * std::log(2.0);
        std::printf(
            "  next-byte loss on %zu held-out windows of 256: dense %.4f bits/byte, MoE %.4f bits/byte\n",
            calib.eval_windows.size(), dense_loss / w, moe_loss / w);
      }
      fs::rename(tmp, out_dir);
    } catch (...) {
      fs::remove_all(tmp);
      throw;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  wrote %s (config.json, model.safetensors, partition.json) in %.1f s\n",
                out_dir.string().c_str(), secs);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_convert: %s\n", e.what());
    return 1;
  }
}
