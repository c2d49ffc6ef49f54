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
#include <stdexcept>
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

/// A command-line error: printed with the usage text, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

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

/// The command line: every flag's value, checked for the flags' syntax and names only.
struct Options {
  std::map<std::string, std::string> values;
  bool help = false;  ///< --help or -h: print the usage and stop
  bool has(const std::string& flag) const { return values.count(flag) != 0; }
  const std::string& operator[](const std::string& flag) const { return values.at(flag); }
  std::string get(const std::string& flag, const std::string& fallback) const {
    return has(flag) ? values.at(flag) : fallback;
  }
  std::string method() const { return values.at("--method"); }
  std::string router() const { return get("--router", "random"); }
  bool uses_importance() const {
    return method() == "sharing-inner" || method() == "sharing-inter" || method() == "gradient";
  }
  bool auto_scale() const { return get("--scale", "") == "auto"; }
};

/// Reads argv into Options; throws UsageError for an unknown, repeated or misplaced flag, a
/// missing required one, or an unknown method or router.
Options parse_options(int argc, char** argv) {
  const std::set<std::string> flags = {
      "--model",    "--output",     "--experts", "--top-k",  "--method", "--seed",        "--expert-size",
      "--residual", "--importance", "--calib",   "--router", "--scale",  "--calib-tokens"};
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      opt.help = true;
      return opt;
    }
    if (!flags.count(a)) throw UsageError("unknown option '" + a + "'");
    if (i + 1 >= argc) throw UsageError("option " + a + " needs a value");
    if (opt.has(a)) throw UsageError("option " + a + " given twice");
    opt.values[a] = argv[++i];
  }
  for (const char* required : {"--model", "--output", "--experts", "--top-k", "--method"})
    if (!opt.has(required)) throw UsageError(std::string("missing ") + required);
  const std::set<std::string> methods = {"random",        "clustering",   "sharing-inner",
                                         "sharing-inter", "coactivation", "gradient"};
  if (!methods.count(opt.method()))
    throw UsageError("unknown method '" + opt.method() +
                     "' (random, clustering, sharing-inner, sharing-inter, coactivation, gradient)");
  const std::string router = opt.router();
  if (router != "random" && router != "centroid" && router != "fit")
    throw UsageError("unknown router '" + router + "' (random, centroid, fit)");
  if (opt.has("--importance") && !opt.uses_importance())
    throw UsageError("--importance is used only by sharing-inner, sharing-inter and gradient");
  if (opt.has("--expert-size") && opt.method() != "sharing-inner" && opt.method() != "sharing-inter")
    throw UsageError("--expert-size is used only by sharing-inner and sharing-inter");
  if (opt.has("--residual") && opt.method() != "sharing-inter")
    throw UsageError("--residual is used only by sharing-inter");
  return opt;
}

/// The conversion's numbers, checked against the model: N, k, the seed, the calibration budget and
/// the sizes the sharing methods take.
struct Settings {
  std::string method, router;
  int n = 0, k = 0, residual = 1;
  std::uint64_t seed = 0;
  Index max_tokens = 4096, expert_size = 0, d = 0, dh = 0;
  int layers = 0;
};

Settings check_settings(const Options& opt, const LlamaConfig& cfg) {
  Settings s{opt.method(), opt.router()};
  const std::int64_t n = parse_int("--experts", opt["--experts"]), k = parse_int("--top-k", opt["--top-k"]);
  MOE_CHECK(n >= 1 && n <= 4096, "--experts must be in [1, 4096], got " << n);
  MOE_CHECK(k >= 1 && k <= n, "--top-k must be in [1, N=" << n << "], got " << k);
  s.n = static_cast<int>(n);
  s.k = static_cast<int>(k);
  s.seed = static_cast<std::uint64_t>(opt.has("--seed") ? parse_int("--seed", opt["--seed"]) : 0);
  s.max_tokens = opt.has("--calib-tokens") ? parse_int("--calib-tokens", opt["--calib-tokens"]) : 4096;
  MOE_CHECK(s.max_tokens >= 8, "--calib-tokens must be at least 8");
  s.d = cfg.hidden;
  s.dh = cfg.intermediate;
  s.layers = cfg.layers;
  if (s.method == "clustering" || s.method == "coactivation")
    MOE_CHECK(s.dh % s.n == 0,
              "method " << s.method << " makes equal experts: N=" << s.n << " must divide d_h=" << s.dh);
  MOE_CHECK(s.dh >= s.n, "cannot split d_h=" << s.dh << " neurons into N=" << s.n << " experts");
  s.residual = opt.has("--residual") ? static_cast<int>(parse_int("--residual", opt["--residual"])) : 1;
  if (s.method == "sharing-inner") s.expert_size = s.dh / s.n;
  if (s.method == "sharing-inter") s.expert_size = s.dh / (s.n + s.residual);
  if (opt.has("--expert-size")) s.expert_size = parse_int("--expert-size", opt["--expert-size"]);
  if (s.method == "sharing-inner")
    MOE_CHECK(s.expert_size >= 1 && s.expert_size <= s.dh,
              "--expert-size must be in [1, d_h=" << s.dh << "]");
  if (s.method == "sharing-inter") {
    MOE_CHECK(s.residual >= 1, "--residual must be at least 1");
    MOE_CHECK(s.expert_size >= 1 && s.residual * s.expert_size + s.n <= s.dh,
              "--residual " << s.residual << " x --expert-size " << s.expert_size << " leaves fewer than N="
                            << s.n << " of d_h=" << s.dh << " neurons for the routed experts");
  }
  const bool needs_calib = opt.uses_importance() || s.method == "coactivation" || s.router == "fit";
  MOE_CHECK(!needs_calib || opt.has("--calib"),
            "--calib is needed by method " << s.method << (s.router == "fit" ? " / --router fit" : ""));
  MOE_CHECK(!opt.uses_importance() || opt.has("--importance"),
            "--importance is needed by method " << s.method);
  MOE_CHECK(!opt.auto_scale() || opt.has("--calib"), "--scale auto needs --calib");
  return s;
}

/// The dense LLaMA to convert; throws if it is not one, or lacks an MLP tensor.
HfCheckpoint open_dense_model(const Options& opt) {
  HfCheckpoint ckpt(opt["--model"]);
  MOE_CHECK(ckpt.config().value("model_type", std::string()) == "llama",
            "'" << opt["--model"] << "/config.json' is not a LLaMA model (model_type '"
                << ckpt.config().value("model_type", std::string()) << "')");
  const LlamaConfig cfg = LlamaConfig::from_json(ckpt.config());
  for (int i = 0; i < cfg.layers; ++i)
    for (const char* p : {"gate_proj", "up_proj", "down_proj"}) (void)ckpt.info(detail::llama_mlp_name(i, p));
  return ckpt;
}

/// One layer's experts: the routed partition and, for sharing-inter, the residual one.
struct LayerPartition {
  std::unique_ptr<ExpertPartition> routed, residual;
  double objective = 0;  ///< clustering: the k-means objective; coactivation: the cut weight
};

/// Splits layer i's neurons by the method (formula 3's index sets). x_fit, h_fit: the layer's
/// calibration inputs and hidden activations; imp: per-cluster importance (formula 5).
LayerPartition split_layer(const Settings& s, int i, const FfnWeights<float>& dense,
                           const RowMatrix<float>& h_fit, const Eigen::MatrixXd& imp) {
  LayerPartition p;
  const auto keep = [&](ExpertPartition part) {
    p.routed = std::make_unique<ExpertPartition>(std::move(part));
  };
  if (s.method == "random") {
    keep(ExpertPartition::independent_random(s.dh, s.n, s.seed + static_cast<std::uint64_t>(i)));
  } else if (s.method == "clustering" || s.method == "coactivation") {
    ConstructedPartition c = s.method == "clustering" ? independent_clustering<float>(dense.up, s.n, s.seed)
                                                      : coactivation_partition<float>(h_fit, s.n, s.seed);
    p.objective = c.objective;
    keep(std::move(c.partition));
  } else if (s.method == "sharing-inner") {
    keep(sharing_inner(imp, s.expert_size));
  } else if (s.method == "gradient") {
    keep(gradient_partition(imp));
  } else {
    ResidualPartition rp = sharing_inter(imp, s.residual, s.expert_size);
    keep(std::move(rp.routed));
    p.residual = std::make_unique<ExpertPartition>(std::move(rp.residual));
  }
  return p;
}

/// Layer i's router, initialised without training (router_init.hpp).
RouterGate<float> init_router(const Settings& s, int i, const FfnWeights<float>& dense,
                              const ExpertPartition& routed, const RowMatrix<float>& x_fit,
                              const RowMatrix<float>& h_fit) {
  RouterGate<float> gate;
  if (s.router == "random")
    return random_router(s.d, s.n, s.seed + 1000003ULL * static_cast<std::uint64_t>(i + 1));
  if (s.router == "centroid") gate = RouterGate<float>(centroid_router<float>(dense.up, routed));
  if (s.router == "fit")
    gate = RouterGate<float>(fit_router<float>(x_fit, expert_activation_mass<float>(h_fit, routed)));
  gate.noise = ColMatrix<float>::Zero(s.d, s.n);
  return gate;
}

/// Every layer as converted: the MoE layers (scale 1) beside their dense FFNs, and what the
/// checkpoint records of them.
struct Converted {
  SafeTensorsWriter writer;
  std::vector<MoELayer<float>> layers;
  std::vector<FfnWeights<float>> dense;
  std::vector<std::vector<Index>> sizes, residual_sizes;
  nlohmann::json partitions = nlohmann::json::array();
  std::vector<LayerReport> reports;
};

/// Records layer i's partition in the checkpoint (tensors, sizes, partition.json) and keeps its layer.
void add_layer(Converted& out, const HfCheckpoint& ckpt, int i, const Settings& s, FfnWeights<float> dense,
               const LayerPartition& p, const RouterGate<float>& gate) {
  std::vector<Index> sizes;
  nlohmann::json pj = {{"layer", i}, {"experts", nlohmann::json::array()}};
  for (int e = 0; e < s.n; ++e) {
    sizes.push_back(p.routed->expert_size(e));
    pj["experts"].push_back(p.routed->expert(e));
  }
  out.sizes.push_back(sizes);
  if (p.residual) {
    std::vector<Index> rs;
    pj["residual"] = nlohmann::json::array();
    for (int r = 0; r < p.residual->num_experts(); ++r) {
      rs.push_back(p.residual->expert_size(r));
      pj["residual"].push_back(p.residual->expert(r));
    }
    out.residual_sizes.push_back(rs);
  }
  out.partitions.push_back(pj);
  add_llama_moe_experts(out.writer, ckpt, i, *p.routed, p.residual.get());
  add_llama_moe_gate(out.writer, i, gate, p.residual != nullptr);
  MoELayer<float> layer(slice_experts<float>(dense.view(), *p.routed), gate,
                        presets::llama_moe_gate(s.k, 1.0));
  if (p.residual) layer.set_shared_experts(slice_experts<float>(dense.view(), *p.residual));
  out.layers.push_back(std::move(layer));
  out.dense.push_back(std::move(dense));
}

/// Step: build every layer's experts and router from the dense FFN and the calibration tokens.
Converted build_layers(const HfCheckpoint& ckpt, const Settings& s, const Calibration& calib,
                       const SafeTensorsFile* importance_file) {
  Converted out;
  out.reports.resize(static_cast<std::size_t>(s.layers));
  const Progress bar("building experts", s.layers);
  for (int i = 0; i < s.layers; ++i) {
    bar.step(i, "layer " + std::to_string(i) + ": " + s.method);
    FfnWeights<float> dense = llama_ffn_weights(ckpt, i);
    RowMatrix<float> x_fit, h_fit;
    if (!calib.empty()) {
      x_fit = calib.fit(i);
      h_fit = ffn_hidden(dense, x_fit);
    }
    Eigen::MatrixXd imp;
    if (importance_file) {  // per data cluster of the fit tokens
      RowMatrix<double> xn = x_fit.cast<double>();
      for (Index t = 0; t < xn.rows(); ++t)
        if (xn.row(t).norm() > 0) xn.row(t).normalize();
      const std::vector<int> cluster = kmeans(xn, s.n, s.seed).labels;
      imp = layer_importance(*importance_file, i, s.n, s.dh, h_fit, cluster);
    }
    const LayerPartition p = split_layer(s, i, dense, h_fit, imp);
    out.reports[static_cast<std::size_t>(i)].partition_objective = p.objective;
    const RouterGate<float> gate = init_router(s, i, dense, *p.routed, x_fit, h_fit);
    add_layer(out, ckpt, i, s, std::move(dense), p, gate);
  }
  bar.step(s.layers, "done");
  return out;
}

/// Layer i of `c` on the fit or the measuring calibration tokens: the routed part of the MoE
/// output (scale 1), its residual part, and the dense FFN's output.
void routed_and_dense(const Converted& c, const Calibration& calib, int i, bool fit_part,
                      RowMatrix<float>& routed_y, RowMatrix<float>& shared_y, RowMatrix<float>& dense_y,
                      RoutingRecord<float>* rec) {
  const RowMatrix<float> xs = fit_part ? calib.fit(i) : calib.eval(i);
  const MoELayer<float>& l = c.layers[static_cast<std::size_t>(i)];
  const FfnWeights<float>& dense = c.dense[static_cast<std::size_t>(i)];
  MoEWorkspace<float> ws;
  RowMatrix<float> y(xs.rows(), l.model_dim());
  l.forward(xs, y, ws, nullptr, rec);  // scale 1: y = Σ w·E + residual
  shared_y = RowMatrix<float>::Zero(xs.rows(), l.model_dim());
  for (const auto& e : l.shared_experts()) shared_y += ffn_hidden(e, xs) * e.down;
  routed_y = y - shared_y;
  dense_y = ffn_hidden(dense, xs) * dense.down;
}

/// Step: the score_scale_factor: --scale F, N/k by default, or with auto the least-squares scale
/// min_s Σ_layers ‖s·routed + shared − dense‖² on the fit tokens.
double output_scale(const Options& opt, const Settings& s, const Converted& c, const Calibration& calib) {
  if (opt.has("--scale") && !opt.auto_scale()) {
    char* end = nullptr;
    const double scale = std::strtod(opt["--scale"].c_str(), &end);
    MOE_CHECK(*end == '\0' && std::isfinite(scale) && scale > 0, "--scale must be a positive number or auto");
    return scale;
  }
  if (!opt.auto_scale() || calib.empty()) return static_cast<double>(s.n) / s.k;
  double num = 0, den = 0;
  for (int i = 0; i < s.layers; ++i) {
    RowMatrix<float> r, sh, dn;
    routed_and_dense(c, calib, i, true, r, sh, dn, nullptr);
    num += static_cast<double>((dn - sh).cwiseProduct(r).sum());
    den += static_cast<double>(r.squaredNorm());
  }
  MOE_CHECK(den > 0 && num > 0,
            "--scale auto: the routed output is zero or anti-correlated with the dense one");
  return num / den;
}

/// Step: layer i measured on the held-out calibration tokens: the FFN error at `scale`, the
/// router's oracle top-k recall, the error of oracle routing (each token's k experts with the most
/// activation mass, weight 1 each, no scale: what a perfect router would leave with this
/// partition), and the load per expert.
void measure_layer(Converted& c, const Calibration& calib, const Settings& s, int i, double scale) {
  RowMatrix<float> r, sh, dn;
  RoutingRecord<float> rec;
  routed_and_dense(c, calib, i, false, r, sh, dn, &rec);
  LayerReport& rep = c.reports[static_cast<std::size_t>(i)];
  rep.rel_error = static_cast<double>((static_cast<float>(scale) * r + sh - dn).norm() / dn.norm());
  const MoELayer<float>& layer = c.layers[static_cast<std::size_t>(i)];
  const RowMatrix<float> xe = calib.eval(i);
  RowMatrix<float> logits(xe.rows(), s.n);
  GateScratch<float> gs;
  gate_logits<float>(layer.router(), RouterOptions{}, xe, logits, gs);
  const ExpertPartition routed(
      s.dh,
      c.partitions[static_cast<std::size_t>(i)]["experts"].get<std::vector<std::vector<std::int32_t>>>());
  const RowMatrix<double> mass =
      expert_activation_mass<float>(ffn_hidden(c.dense[static_cast<std::size_t>(i)], xe), routed);
  rep.recall = oracle_top_k_recall(logits, mass, s.k);
  IdMatrix ids(xe.rows(), s.k);
  std::vector<double> scratch(static_cast<std::size_t>(s.k));
  for (Index t = 0; t < xe.rows(); ++t) {
    const Eigen::RowVectorXd m = mass.row(t);
    top_k(m.data(), s.n, s.k, ids.row(t).data(), scratch.data());
  }
  MoEWorkspace<float> ws;
  RowMatrix<float> y_oracle(xe.rows(), s.d);
  layer.forward_routed(xe, ids, RowMatrix<float>::Ones(xe.rows(), s.k), y_oracle, ws);
  rep.oracle_error = static_cast<double>((y_oracle - dn).norm() / dn.norm());
  for (const Index count : rec.tokens_per_expert)
    rep.load.push_back(static_cast<double>(count) / static_cast<double>(xe.rows() * s.k));
}

/// Step: the report on stdout, a line per layer.
void print_report(const Options& opt, const Settings& s, const Converted& c, const Calibration& calib,
                  double scale) {
  std::printf(
      "moe_convert: %s -> %s: %d layers, d=%lld, d_h=%lld, N=%d, k=%d, method %s, router %s, scale %.4g\n",
      opt["--model"].c_str(), opt["--output"].c_str(), s.layers, static_cast<long long>(s.d),
      static_cast<long long>(s.dh), s.n, s.k, s.method.c_str(), s.router.c_str(), scale);
  if (calib.empty()) std::printf("  (no --calib: FFN error, oracle recall and load not measured)\n");
  if (!calib.empty())
    std::printf("  measured on %lld held-out calibration tokens per layer\n",
                static_cast<long long>(calib.eval_rows()));
  for (int i = 0; i < s.layers; ++i) {
    const LayerReport& rep = c.reports[static_cast<std::size_t>(i)];
    std::printf("  layer %d:", i);
    if (s.method == "clustering") std::printf(" k-means objective %.4g", rep.partition_objective);
    if (s.method == "coactivation") std::printf(" cut weight %.4f", rep.partition_objective);
    if (!calib.empty()) {
      std::printf(" ffn rel.err %.4f (oracle routing %.4f)  oracle recall %.4f  load", rep.rel_error,
                  rep.oracle_error, rep.recall);
      for (const double l : rep.load) std::printf(" %.3f", l);
    }
    std::printf("\n");
  }
}

/// The written checkpoint read back as a whole model: next-byte loss on the held-out windows,
/// dense vs MoE (bits/byte = nats / ln 2).
void print_model_loss(const HfCheckpoint& dense_ckpt, const fs::path& written, const Calibration& calib) {
  const LlamaModel dense_model(dense_ckpt), moe_model{HfCheckpoint(written.string())};
  double dense_loss = 0, moe_loss = 0;
  for (const auto& ids : calib.eval_windows) {
    dense_loss += next_token_loss(dense_model.forward(ids), ids);
    moe_loss += next_token_loss(moe_model.forward(ids), ids);
  }
  const double w = static_cast<double>(calib.eval_windows.size()) * std::log(2.0);
  std::printf("  next-byte loss on %zu held-out windows of 256: dense %.4f bits/byte, MoE %.4f bits/byte\n",
              calib.eval_windows.size(), dense_loss / w, moe_loss / w);
}

/// The files of the output directory, written into `dir`: model.safetensors (the experts and
/// routers, every other tensor copied unchanged), config.json, partition.json and the model's
/// generation_config.json.
void write_files(const fs::path& dir, const Options& opt, const Settings& s, Converted& c,
                 const HfCheckpoint& ckpt, double scale) {
  for (const std::string& name : ckpt.names()) {
    if (name.find(".mlp.") != std::string::npos) continue;
    const TensorInfo& t = ckpt.info(name);
    c.writer.add_bytes(name, t.dtype, t.shape, ckpt.file_of(name).bytes(name), t.end - t.begin);
  }
  c.writer.set_metadata("format", "pt");
  c.writer.write((dir / "model.safetensors").string());
  const nlohmann::json config = llama_moe_config(ckpt.config(), s.k, c.sizes, c.residual_sizes,
                                                 s.router == "random" ? "mlp" : "linear", scale);
  std::ofstream(dir / "config.json") << config.dump(2) << "\n";
  nlohmann::json pjson = {{"method", s.method},    {"seed", s.seed},     {"num_experts", s.n},
                          {"top_k", s.k},          {"router", s.router}, {"score_scale_factor", scale},
                          {"layers", c.partitions}};
  if (s.method == "sharing-inter") pjson["num_experts_residual"] = s.residual;
  std::ofstream pf(dir / "partition.json");
  pf << pjson.dump() << "\n";
  MOE_CHECK(pf.good(), "cannot write '" << (dir / "partition.json").string() << "'");
  pf.close();
  for (const char* extra : {"generation_config.json"})
    if (fs::exists(fs::path(opt["--model"]) / extra))
      fs::copy_file(fs::path(opt["--model"]) / extra, dir / extra);
}

/// Step: writes the checkpoint under a temporary name beside --output, scores it there (text
/// calibration), then renames it: the output appears only once complete.
void write_checkpoint(const Options& opt, const Settings& s, Converted& c, const HfCheckpoint& ckpt,
                      const Calibration& calib, double scale) {
  const fs::path out_dir = opt["--output"];
  const fs::path tmp = out_dir.string() + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    write_files(tmp, opt, s, c, ckpt, scale);
    if (!calib.eval_windows.empty()) print_model_loss(ckpt, tmp, calib);
    fs::rename(tmp, out_dir);
  } catch (...) {
    fs::remove_all(tmp);
    throw;
  }
}

/// The conversion, step by step.
void convert(const Options& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path out_dir = opt["--output"];
  MOE_CHECK(!fs::exists(out_dir),
            "output '" << out_dir.string() << "' already exists; remove it or pick another");
  const HfCheckpoint ckpt = open_dense_model(opt);
  const LlamaConfig cfg = LlamaConfig::from_json(ckpt.config());
  const Settings s = check_settings(opt, cfg);
  std::unique_ptr<SafeTensorsFile> importance_file;
  if (opt.has("--importance")) importance_file = std::make_unique<SafeTensorsFile>(opt["--importance"]);
  Calibration calib;
  if (opt.has("--calib")) calib = calibration_inputs(ckpt, cfg, opt["--calib"], s.max_tokens);

  Converted c = build_layers(ckpt, s, calib, importance_file.get());
  const double scale = output_scale(opt, s, c, calib);
  if (!calib.empty())
    for (int i = 0; i < s.layers; ++i) measure_layer(c, calib, s, i, scale);
  print_report(opt, s, c, calib, scale);
  write_checkpoint(opt, s, c, ckpt, calib, scale);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  wrote %s (config.json, model.safetensors, partition.json) in %.1f s\n",
              out_dir.string().c_str(), secs);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options opt = parse_options(argc, argv);
    if (opt.help)
      std::fputs(kUsage, stdout);
    else
      convert(opt);
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "moe_convert: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_convert: %s\n", e.what());
    return 1;
  }
}
