// moe — a MoE layer on the GPU: the CUDA counterpart of MoELayer<float, W>::forward.
//
// DeviceMoELayer uploads a host layer's router and expert weights once, keeps a workspace sized
// for a maximum token count, and runs a forward as a fixed sequence of kernels on one stream:
// the router (logits, softmax, top-k: routing.cuh), one kernel that counts, scans and stably scatters the
// pairs by expert (permute.cuh),
// the gate-up product with SwiGLU and the down product — matrix-vector kernels for the experts with at most
// kFewRows rows (expert_gemv.cuh), grouped tiles for the others (on the tensor cores for bf16 and fp16
// weights, with the activations rounded to the weights' type: pipelined 128-row tiles,
// expert_mma_pipelined.cuh (or, opted in, their wgmma form for H100/H200, expert_mma_wgmma.cuh),
// where d and every m_e are multiples of 8, else 64-row tiles, expert_mma.cuh;
// on the CUDA cores in float for float weights, expert_gemm.cuh) — and the weighted combine with the
// N/k rescale (combine.cuh).
// forward(device pointers) copies nothing to the host and allocates nothing, so it can be captured in a CUDA
// graph; the same input gives the same output bits on every run.
//
// Supported: the router of formula (2) (softmax over N, top-k on the logits or the scores,
// weights as they are or renormalised over the k, a routed scaling factor), SwiGLU experts
// without biases, float / bf16 / half expert weights, N <= 256, k <= 32. Anything else is refused
// by check_supported with a message naming it.
//
// The kernels are header-only: the plain ones are `static` (each translation unit that launches one
// compiles its own copy; a non-static __global__ in a header is a duplicate symbol at link time),
// the templated ones are templates.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "moe/cuda/arch/launch.cuh"
#include "moe/cuda/check.cuh"
#include "moe/cuda/kernels/combine.cuh"
#include "moe/cuda/kernels/expert_gemm.cuh"
#include "moe/cuda/kernels/expert_gemv.cuh"
#include "moe/cuda/kernels/expert_mma.cuh"
#include "moe/cuda/kernels/expert_mma_pipelined.cuh"
#include "moe/cuda/kernels/expert_mma_wgmma.cuh"
#include "moe/cuda/kernels/permute.cuh"
#include "moe/cuda/kernels/routing.cuh"
#include "moe/layer/moe_layer.hpp"

namespace moe::cuda {

/// The device type holding the same bits as the host weight type W.
template <class W>
struct DeviceScalar {
  using type = float;
};
template <>
struct DeviceScalar<Eigen::bfloat16> {
  using type = __nv_bfloat16;
};
template <>
struct DeviceScalar<Eigen::half> {
  using type = __half;
};

/// Which tensor-core tiles take the bf16/fp16 experts with more than kFewRows rows. kAuto: the
/// pipelined 128-row tiles (expert_mma_pipelined.cuh, WMMA) where d and every m_e are multiples of
/// 8, else the 64-row tiles (expert_mma.cuh). k64: the 64-row tiles always. kWgmma: the pipelined
/// tiles on Hopper's wgmma (expert_mma_wgmma.cuh) where kAuto takes the pipelined ones; needs a
/// compute capability 9.0 GPU and a build with sm_90a code (CMAKE_CUDA_ARCHITECTURES 90a-real,
/// this project's default). k64 and kWgmma are there so that one binary can time the three on a
/// GPU (moe_bench_cuda --tiles); none has been timed yet. Float weights ignore the choice.
enum class TileKernels { kAuto, k64, kWgmma };

/// Throws moe::Error naming the first thing about `layer` the CUDA path does not implement.
template <class W>
void check_supported(const MoELayer<float, W>& layer) {
  const MoEConfig& c = layer.config();
  const RouterOptions& r = c.router;
  const RouterGate<float>& g = layer.router();
  const int n = layer.num_experts();
  MOE_CHECK(!g.empty(), "CUDA MoE layer: the layer has no router weight");
  MOE_CHECK(g.mlp_out.size() == 0, "CUDA MoE layer: the two-layer (tanh MLP) router gate is not supported");
  MOE_CHECK(g.bias.size() == 0, "CUDA MoE layer: a router bias is not supported");
  MOE_CHECK(g.selection_bias.size() == 0, "CUDA MoE layer: a selection bias is not supported");
  MOE_CHECK(!r.noisy_gate, "CUDA MoE layer: the noisy gate is not supported");
  MOE_CHECK(r.score == ScoreFunction::kSoftmax && !r.score_selected_only,
            "CUDA MoE layer: only the softmax over all N experts is supported as the router score");
  MOE_CHECK(r.n_group == 1,
            "CUDA MoE layer: group-limited selection (n_group " << r.n_group << ") is not supported");
  MOE_CHECK(r.renormalize != Renormalize::kPNorm, "CUDA MoE layer: p-norm renormalisation is not supported");
  MOE_CHECK(!r.capacity_factor, "CUDA MoE layer: an expert capacity is not supported");
  MOE_CHECK(c.activation.kind == GluKind::kSwiGLU, "CUDA MoE layer: only SwiGLU experts are supported");
  MOE_CHECK(!c.scale_input,
            "CUDA MoE layer: scale_input (weights applied before the expert) is not supported");
  MOE_CHECK(layer.shared_experts().empty(), "CUDA MoE layer: shared experts are not supported");
  MOE_CHECK(n <= kMaxExperts,
            "CUDA MoE layer: N = " << n << " experts, at most " << kMaxExperts << " supported");
  MOE_CHECK(c.top_k <= kMaxTopK,
            "CUDA MoE layer: k = " << c.top_k << ", at most " << kMaxTopK << " supported");
  for (int e = 0; e < n; ++e) {
    const FfnWeightsView<W>& w = layer.expert(e);
    MOE_CHECK(!w.gate_bias && !w.up_bias && !w.down_bias,
              "CUDA MoE layer: expert " << e << " has biases, which are not supported");
  }
}

/// The CUDA backend of a MoELayer<float, W>: its router and experts in device memory (uploaded
/// once), a workspace for up to capacity() tokens, and a stream. Used as `layer.forward(x, y, gpu)`
/// (MoELayer's backend overload, the same call as with a CpuBackend), or directly: forward() on
/// device pointers (graph-capturable) or host matrices.
template <class W = float>
class DeviceMoELayer {
  using DW = typename DeviceScalar<W>::type;
  static_assert(sizeof(DW) == sizeof(W), "device and host weight types must hold the same bits");

 public:
  /// Uploads the router and the experts (synchronously) and reserves a workspace for max_tokens;
  /// `stream` is where layer.forward(x, y, *this) runs. Throws moe::Error if check_supported
  /// refuses the layer or a CUDA call fails.
  explicit DeviceMoELayer(const MoELayer<float, W>& layer, Index max_tokens = 0,
                          cudaStream_t stream = nullptr)
      : source_(&layer),
        stream_(stream),
        n_(layer.num_experts()),
        k_(layer.top_k()),
        d_(layer.model_dim()),
        scale_(static_cast<float>(layer.scale())) {
    check_supported(layer);
    const RouterOptions& r = layer.config().router;
    opt_.select_on_scores = r.select == SelectOn::kScores;
    opt_.renormalize = r.renormalize == Renormalize::kL1;
    opt_.renorm_epsilon = static_cast<float>(r.renorm_epsilon);
    opt_.routed_scaling_factor = static_cast<float>(r.routed_scaling_factor);

    router_.upload(layer.router_weight().data(), static_cast<std::size_t>(layer.router_weight().size()));
    std::vector<long long> offset(static_cast<std::size_t>(n_));
    std::vector<int> hidden(static_cast<std::size_t>(n_));
    long long total = 0;
    for (int e = 0; e < n_; ++e) {
      const auto u = static_cast<std::size_t>(e);
      offset[u] = total;
      hidden[u] = static_cast<int>(layer.expert(e).hidden_dim());
      max_hidden_ = std::max<Index>(max_hidden_, hidden[u]);
      total += static_cast<long long>(d_) * hidden[u];
    }
    gate_.reserve(static_cast<std::size_t>(total));
    up_.reserve(static_cast<std::size_t>(total));
    down_.reserve(static_cast<std::size_t>(total));
    for (int e = 0; e < n_; ++e) {
      const FfnWeightsView<W>& w = layer.expert(e);
      const auto off = static_cast<std::size_t>(offset[static_cast<std::size_t>(e)]);
      copy_matrix(w.gate, gate_.data() + off);
      copy_matrix(w.up, up_.data() + off);
      copy_matrix(w.down, down_.data() + off);
    }
    ldh_ = (max_hidden_ + 7) / 8 * 8;
    for (int m : hidden) vec_hidden_ = vec_hidden_ && m % kernels::kVector<DW> == 0;
    pipelined_fits_ = !std::is_same_v<DW, float> && d_ % 8 == 0 && vec_hidden_;
    if constexpr (!std::is_same_v<DW, float>) {
      if (pipelined_fits_) {  // their 60 KB of shared memory is over a launch's default 48 KB
        MOE_CUDA_CHECK(cudaFuncSetAttribute(kernels::expert_hidden_swiglu_pipelined<DW>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kernels::kPipeSharedBytes));
        MOE_CUDA_CHECK(cudaFuncSetAttribute(kernels::expert_down_pipelined<DW>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kernels::kPipeSharedBytes));
      }
    }
    weight_offset_.upload(offset.data(), offset.size());
    hidden_.upload(hidden.data(), hidden.size());
    const unsigned no_bad_token = 0xffffffffu;  // what check_routing finds until a forward runs
    bad_token_.upload(&no_bad_token, 1);
    int device = 0;
    cudaDeviceProp prop{};
    MOE_CUDA_CHECK(cudaGetDevice(&device));
    MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    overlap_supported_ = overlap_launches_ = prop.major >= 9;
    reserve(max_tokens);
  }

  int num_experts() const { return n_; }
  int top_k() const { return k_; }
  Index model_dim() const { return d_; }
  Index capacity() const { return capacity_; }  ///< tokens the workspace holds
  cudaStream_t stream() const { return stream_; }

  /// Chooses the tensor-core tiles (TileKernels) for the forwards queued after this call. Throws
  /// moe::Error for kWgmma where this binary has no wgmma code for the current GPU (it asks the
  /// GPU once: a launch and a synchronising copy).
  void set_tile_kernels(TileKernels tiles) {
    if constexpr (!std::is_same_v<DW, float>) {
      if (tiles == TileKernels::kWgmma && !wgmma_ready_) {
        MOE_CHECK(wgmma_available(),
                  "CUDA MoE layer: TileKernels::kWgmma needs a compute capability 9.0 GPU (H100/H200) and a "
                  "build with sm_90a code (CMAKE_CUDA_ARCHITECTURES 90a-real, or nvcc "
                  "-gencode=arch=compute_90a,code=sm_90a)");
        // 96 KB of shared memory: over a launch's default 48 KB.
        MOE_CUDA_CHECK(cudaFuncSetAttribute(kernels::expert_hidden_swiglu_wgmma<DW>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kernels::kWgmmaSharedBytes));
        MOE_CUDA_CHECK(cudaFuncSetAttribute(kernels::expert_down_wgmma<DW>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kernels::kWgmmaSharedBytes));
        wgmma_ready_ = true;
      }
    }
    tiles_ = tiles;
  }
  TileKernels tile_kernels() const { return tiles_; }
  /// Experts with 1..rows rows take the matrix-vector kernels and the others the tiles, in the
  /// forwards queued after this call; 0 <= rows <= kFewRows (the default), 0: every expert on the
  /// tiles. A tuning knob, there so that one binary can time where the two paths should meet
  /// (moe_bench_cuda --few-rows): each matrix-vector warp reads its expert's float activation rows
  /// for every output column, which at many rows may cost more than a tile's unused rows.
  void set_few_rows(int rows) {
    MOE_CHECK(rows >= 0 && rows <= kFewRows,
              "CUDA MoE layer: set_few_rows(" << rows << "), expected 0.." << kFewRows);
    few_rows_ = rows;
  }
  int few_rows() const { return few_rows_; }
  /// Whether each kernel of a forward after the first is launched to overlap the one before it
  /// (programmatic dependent launch: its launch latency can hide behind the previous kernel's
  /// tail, which counts at decode, where a forward is 5 short kernels; not yet timed on a GPU).
  /// Each kernel still waits for the previous one to finish before it reads anything, so the bits
  /// are the same either way. On by default where the GPU has compute capability 9.0 or later,
  /// where alone it can be turned on (else moe::Error). A switch so that one binary can time both
  /// (moe_bench_cuda --no-overlap), and a way out should a driver refuse the launches.
  void set_overlap_launches(bool on) {
    MOE_CHECK(!on || overlap_supported_,
              "CUDA MoE layer: overlapped launches (programmatic dependent launch) need a GPU of compute "
              "capability 9.0 or later");
    overlap_launches_ = on;
  }
  bool overlap_launches() const { return overlap_launches_; }
  /// Whether forwards take the pipelined 128-row tiles, WMMA or wgmma, past kFewRows rows
  /// (bf16/fp16 weights, d and every m_e multiples of 8, TileKernels kAuto or kWgmma).
  bool pipelined_tiles() const { return pipelined_fits_ && tiles_ != TileKernels::k64; }

  /// Sizes the workspace for up to `tokens` tokens per forward (allocates; forward never does).
  void reserve(Index tokens) {
    MOE_CHECK(tokens >= 0, "CUDA MoE layer: reserve(" << tokens << ")");
    if (tokens <= capacity_) return;
    const auto t = static_cast<std::size_t>(tokens), pairs = t * static_cast<std::size_t>(k_);
    const auto n = static_cast<std::size_t>(n_), d = static_cast<std::size_t>(d_);
    logits_.reserve(t * n);
    ids_.reserve(pairs);
    weights_.reserve(pairs);
    counts_.reserve(n);
    few_experts_.reserve(n);
    num_few_.reserve(1);
    offsets_.reserve(n + 1);
    tile_offsets_.reserve(n + 1);
    sorted_pair_.reserve(pairs);
    row_of_.reserve(pairs);
    h_.reserve(pairs * static_cast<std::size_t>(ldh_));
    y_rows_.reserve(pairs * d);
    if (pipelined_fits_) {
      x_rounded_.reserve(t * d);
      h_rounded_.reserve(pairs * static_cast<std::size_t>(ldh_));
    }
    capacity_ = tokens;
  }

  /// y = the layer's forward of x, both T x d row-major float in device memory (y must not alias
  /// x), queued on `stream`: no allocation, no copy to the host, no synchronisation. A token with a
  /// NaN/Inf router logit gets a zero output row and is reported by check_routing().
  void forward(const float* x, float* y, Index tokens, cudaStream_t stream = nullptr) {
    MOE_CHECK(tokens >= 0 && tokens <= capacity_, "CUDA MoE layer: forward of "
                                                      << tokens << " tokens, the workspace holds "
                                                      << capacity_ << " (call reserve)");
    MOE_CHECK(tokens == 0 || (x && y && x != y), "CUDA MoE layer: x and y must be distinct device pointers");
    last_tokens_ = tokens;
    if (tokens == 0) return;
    const long long t = tokens, pairs = t * k_;
    // At most pairs / (few_rows_ + 1) experts have more than few_rows_ rows (the tile path); by
    // default none at decode (T = 1..8 at k = 2), where the tile kernels are not launched at all.
    const long long tile_experts = std::min<long long>(n_, pairs / (few_rows_ + 1));
    const bool pipelined = pipelined_tiles() && tile_experts > 0;
    launch_router(x, t, pipelined, stream);
    launch_next(kernels::group_by_expert, 1, kernels::kGroupThreads, 0, stream, ids_.data(), pairs, k_, n_,
                pipelined ? kPipeTileRows : kTileRows, few_rows_, counts_.data(), offsets_.data(),
                tile_offsets_.data(), few_experts_.data(), num_few_.data(), sorted_pair_.data(),
                row_of_.data(), bad_token_.data());
    const kernels::DeviceExperts<DW> ex{
        gate_.data(), up_.data(), down_.data(), weight_offset_.data(), hidden_.data(), n_, d_};
    const bool vec_x = d_ % kernels::kVector<DW> == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
    if (few_rows_ > 0) launch_few_rows(x, vec_x, ex, t, pairs, stream);
    if (tile_experts > 0) launch_tiles(x, vec_x, ex, pairs, tile_experts, pipelined, stream);
    const bool vec_y = d_ % 4 == 0 && reinterpret_cast<std::uintptr_t>(y) % 16 == 0;
    launch_next(vec_y ? kernels::combine<true> : kernels::combine<false>, static_cast<unsigned>(t),
                kernels::kCombineThreads, 0, stream, y_rows_.data(), static_cast<long long>(d_), ids_.data(),
                weights_.data(), row_of_.data(), k_, scale_, y);
  }

  /// The host convenience: copies x in, runs forward, copies y out, synchronises, and throws
  /// moe::Error if a router logit was NaN/Inf (naming the first such token). Grows the workspace
  /// (and keeps device copies of x and y).
  void forward(const ConstRowRef<float>& x, RowRef<float> y, cudaStream_t stream = nullptr) {
    MOE_CHECK(x.cols() == d_, "CUDA MoE layer: x has " << x.cols() << " columns, the layer expects d=" << d_);
    MOE_CHECK(y.rows() == x.rows() && y.cols() == d_, "CUDA MoE layer: y is " << y.rows() << "x" << y.cols()
                                                                              << ", expected " << x.rows()
                                                                              << "x" << d_);
    const Index t = x.rows();
    reserve(t);
    if (t == 0) return;
    x_staging_.reserve(static_cast<std::size_t>(t * d_));
    y_staging_.reserve(static_cast<std::size_t>(t * d_));
    // Host rows may lie outerStride apart; on the device they are packed (one 2D copy each way).
    const std::size_t row_bytes = sizeof(float) * static_cast<std::size_t>(d_);
    MOE_CUDA_CHECK(cudaMemcpy2DAsync(x_staging_.data(), row_bytes, x.data(), sizeof(float) * x.outerStride(),
                                     row_bytes, t, cudaMemcpyHostToDevice, stream));
    forward(x_staging_.data(), y_staging_.data(), t, stream);
    MOE_CUDA_CHECK(cudaMemcpy2DAsync(y.data(), sizeof(float) * y.outerStride(), y_staging_.data(), row_bytes,
                                     row_bytes, t, cudaMemcpyDeviceToHost, stream));
    check_routing(stream);
  }

  /// The backend call of MoELayer::forward(x, y, backend): the host forward above on stream(), for
  /// the layer this was built from (the one whose weights were uploaded; a copy or a moved-to layer
  /// is another object and is refused).
  void forward(const MoELayer<float, W>& layer, const ConstRowRef<float>& x, RowRef<float> y) {
    MOE_CHECK(&layer == source_,
              "CUDA MoE layer: asked to run a MoELayer other than the one it was built from "
              "(whose weights it uploaded)");
    forward(x, y, stream_);
  }

  /// Synchronises `stream` and throws moe::Error if the last forward met a NaN/Inf router logit.
  void check_routing(cudaStream_t stream = nullptr) const {
    unsigned bad = 0;
    MOE_CUDA_CHECK(cudaMemcpyAsync(&bad, bad_token_.data(), sizeof bad, cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    MOE_CHECK(bad == 0xffffffffu, "CUDA MoE layer: a router logit of token " << bad << " is NaN or infinite");
  }

  /// The last forward's routing, copied to the host (synchronises): ids T x k (best first), weights
  /// T x k (before the rescale), and the tokens per expert. `tokens`: that forward's T.
  void last_routing(Index tokens, IdMatrix& ids, RowMatrix<float>& weights, std::vector<int>& counts,
                    cudaStream_t stream = nullptr) const {
    check_last_tokens("last_routing", tokens);
    ids.resize(tokens, k_);
    weights.resize(tokens, k_);
    counts.assign(static_cast<std::size_t>(n_), 0);
    if (tokens == 0) return;
    const auto pairs = static_cast<std::size_t>(tokens * k_);
    MOE_CUDA_CHECK(
        cudaMemcpyAsync(ids.data(), ids_.data(), pairs * sizeof(int), cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaMemcpyAsync(weights.data(), weights_.data(), pairs * sizeof(float),
                                   cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaMemcpyAsync(counts.data(), counts_.data(), counts.size() * sizeof(int),
                                   cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  /// The last forward's router logits, T x N, copied to the host (synchronises). `tokens`: that
  /// forward's T.
  void last_logits(Index tokens, RowMatrix<float>& logits, cudaStream_t stream = nullptr) const {
    check_last_tokens("last_logits", tokens);
    logits.resize(tokens, n_);
    if (tokens == 0) return;
    MOE_CUDA_CHECK(cudaMemcpyAsync(logits.data(), logits_.data(),
                                   sizeof(float) * static_cast<std::size_t>(tokens * n_),
                                   cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

 private:
  /// A kernel of forward after its first: launch_overlapping where overlap_launches(), else
  /// launch_with_shared. (The first follows whatever came before it on the stream, the plain way.)
  template <class... Params, class... Args>
  void launch_next(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
                   cudaStream_t stream, Args&&... args) const {
    if (overlap_launches_)
      launch_overlapping(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
    else
      launch_with_shared(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
  }

  /// forward's first kernel: the router's logits, top-k and weights (and, for the pipelined
  /// tiles, x rounded to the weights' type). Below kRouteTokens tokens, a block per token: T blocks
  /// at once, each with all its loads in flight (route_tokens).
  void launch_router(const float* x, long long t, bool pipelined, cudaStream_t stream) {
    using kernels::kRouteTokens;
    const bool vec_route = d_ % 4 == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
    const bool one_token = t < kRouteTokens;
    const auto route =
        vec_route
            ? (one_token ? kernels::route_tokens<DW, true, 1> : kernels::route_tokens<DW, true, kRouteTokens>)
            : (one_token ? kernels::route_tokens<DW, false, 1>
                         : kernels::route_tokens<DW, false, kRouteTokens>);
    launch(route, static_cast<unsigned>(one_token ? t : (t + kRouteTokens - 1) / kRouteTokens),
           kernels::kRouteThreads, stream, x, t, router_.data(), static_cast<long long>(d_), n_, k_, opt_,
           logits_.data(), ids_.data(), weights_.data(), pipelined ? x_rounded_.data() : nullptr);
  }

  /// Experts with 1..few_rows_ rows: matrix-vector products (launch_few). A token routes to an
  /// expert at most once, so such an expert has at most min(T, few_rows_) rows: the kernels'
  /// register arrays are sized to that (at T = 1, one row).
  void launch_few_rows(const float* x, bool vec_x, const kernels::DeviceExperts<DW>& ex, long long t,
                       long long pairs, cudaStream_t stream) {
    const long long rows = std::min<long long>(t, few_rows_);
    if (rows <= 1)
      launch_few<1>(x, vec_x, ex, pairs, stream);
    else if (rows <= 4)
      launch_few<4>(x, vec_x, ex, pairs, stream);
    else
      launch_few<kFewRows>(x, vec_x, ex, pairs, stream);
  }

  /// The other experts: row tiles (expert_mma_pipelined.cuh, expert_mma_wgmma.cuh or
  /// expert_mma.cuh for bf16/fp16, expert_gemm.cuh for float), at most pairs / tile_rows of them
  /// plus one partial tile per expert.
  void launch_tiles(const float* x, bool vec_x, const kernels::DeviceExperts<DW>& ex, long long pairs,
                    long long tile_experts, bool pipelined, cudaStream_t stream) {
    const int tile_rows = pipelined ? kPipeTileRows : kTileRows;
    const auto row_tiles = static_cast<unsigned>((pairs + tile_rows - 1) / tile_rows + tile_experts);
    if constexpr (!std::is_same_v<DW, float>) {
      if (pipelined) return launch_pipelined_tiles(row_tiles, ex, stream);
    }
    const dim3 hidden_grid(row_tiles, static_cast<unsigned>((max_hidden_ + kTileCols - 1) / kTileCols));
    const dim3 down_grid(row_tiles, static_cast<unsigned>((d_ + kTileCols - 1) / kTileCols));
    if constexpr (!std::is_same_v<DW, float>) {  // bf16 / fp16: tensor cores, 64-row tiles
      // 16-byte loads where every row and weight column allows them (vec_x: d a multiple of 8;
      // vec_hidden_: every m_e).
      launch_next(
          vec_x ? kernels::expert_hidden_swiglu_mma<DW, true> : kernels::expert_hidden_swiglu_mma<DW, false>,
          hidden_grid, kMmaThreads, 0, stream, x, sorted_pair_.data(), k_, ex, offsets_.data(),
          tile_offsets_.data(), h_.data(), ldh_);
      launch_next(vec_hidden_ ? kernels::expert_down_mma<DW, true> : kernels::expert_down_mma<DW, false>,
                  down_grid, kMmaThreads, 0, stream, h_.data(), ldh_, ex, offsets_.data(),
                  tile_offsets_.data(), y_rows_.data());
    } else {  // float: CUDA cores, float activations (expert_gemm.cuh)
      static_cast<void>(vec_x);
      launch_next(kernels::expert_hidden_swiglu<DW>, hidden_grid, kGemmThreads, 0, stream, x,
                  sorted_pair_.data(), k_, ex, offsets_.data(), tile_offsets_.data(), h_.data(), ldh_);
      launch_next(kernels::expert_down<DW>, down_grid, kGemmThreads, 0, stream, h_.data(), ldh_, ex,
                  offsets_.data(), tile_offsets_.data(), y_rows_.data());
    }
  }

  /// The 128-row tiles on x rounded by the router, writing h rounded into h_rounded_: WMMA
  /// (expert_mma_pipelined.cuh), or wgmma with TileKernels::kWgmma. (An explicit instantiation of
  /// the float layer compiles this function too: the if constexpr keeps the 16-bit kernels out.)
  void launch_pipelined_tiles(unsigned row_tiles, const kernels::DeviceExperts<DW>& ex, cudaStream_t stream) {
    if constexpr (!std::is_same_v<DW, float>) {  // 16-bit weights only
      using kernels::pipe::kCols;
      const dim3 grid(row_tiles, static_cast<unsigned>((max_hidden_ + kCols / 2 - 1) / (kCols / 2)));
      const dim3 down_tiles(row_tiles, static_cast<unsigned>((d_ + kCols - 1) / kCols));
      const bool wgmma = tiles_ == TileKernels::kWgmma;
      const int shared = wgmma ? kernels::kWgmmaSharedBytes : kernels::kPipeSharedBytes;
      launch_next(
          wgmma ? kernels::expert_hidden_swiglu_wgmma<DW> : kernels::expert_hidden_swiglu_pipelined<DW>, grid,
          kPipeThreads, shared, stream, x_rounded_.data(), sorted_pair_.data(), k_, ex, offsets_.data(),
          tile_offsets_.data(), h_rounded_.data(), ldh_);
      launch_next(wgmma ? kernels::expert_down_wgmma<DW> : kernels::expert_down_pipelined<DW>, down_tiles,
                  kPipeThreads, shared, stream, h_rounded_.data(), ldh_, ex, offsets_.data(),
                  tile_offsets_.data(), y_rows_.data());
    } else {
      static_cast<void>(row_tiles), static_cast<void>(ex), static_cast<void>(stream);
    }
  }

  /// The matrix-vector kernels of forward (expert_gemv.cuh) for experts of at most kRows rows. At
  /// most min(N, pairs) experts have rows: the grid is sized without reading the counts back.
  template <int kRows>
  void launch_few(const float* x, bool vec_x, const kernels::DeviceExperts<DW>& ex, long long pairs,
                  cudaStream_t stream) {
    const auto few_slots = static_cast<unsigned>(std::min<long long>(n_, pairs));
    const dim3 hidden_grid(few_slots, static_cast<unsigned>((max_hidden_ + kGemvWarps - 1) / kGemvWarps));
    const dim3 down_grid(few_slots, static_cast<unsigned>((d_ + kGemvWarps - 1) / kGemvWarps));
    launch_next(vec_x ? kernels::expert_hidden_swiglu_few<DW, true, kRows>
                      : kernels::expert_hidden_swiglu_few<DW, false, kRows>,
                hidden_grid, kGemvWarps * 32, 0, stream, x, sorted_pair_.data(), k_, ex, offsets_.data(),
                few_experts_.data(), num_few_.data(), h_.data(), ldh_);
    launch_next(
        vec_hidden_ ? kernels::expert_down_few<DW, true, kRows> : kernels::expert_down_few<DW, false, kRows>,
        down_grid, kGemvWarps * 32, 0, stream, h_.data(), ldh_, ex, offsets_.data(), few_experts_.data(),
        num_few_.data(), y_rows_.data());
  }

  void check_last_tokens(const char* what, Index tokens) const {
    MOE_CHECK(last_tokens_ >= 0, "CUDA MoE layer: " << what << " before any forward");
    MOE_CHECK(tokens == last_tokens_, "CUDA MoE layer: " << what << " of " << tokens
                                                         << " tokens; the last forward ran " << last_tokens_);
  }

  /// A d x m or m x d column-major matrix, copied as stored into device memory at dst.
  template <class M>
  static void copy_matrix(const M& m, DW* dst) {
    static_assert(sizeof(typename M::Scalar) == sizeof(DW), "weights keep their bits on the device");
    MOE_CHECK(m.outerStride() == m.rows(), "CUDA MoE layer: expert matrices must be packed (outer stride "
                                               << m.outerStride() << ", rows " << m.rows() << ")");
    MOE_CUDA_CHECK(
        cudaMemcpy(dst, m.data(), sizeof(DW) * static_cast<std::size_t>(m.size()), cudaMemcpyHostToDevice));
  }

  const MoELayer<float, W>* source_;  // identity only: the layer whose weights were uploaded
  cudaStream_t stream_;
  int n_, k_;
  Index d_;
  float scale_;
  Index max_hidden_ = 0;
  Index ldh_ = 0;                ///< h's row stride: max_hidden_ rounded up to 8 (16-byte rows)
  bool vec_hidden_ = true;       ///< every m_e a whole number of 16-byte weight vectors
  bool pipelined_fits_ = false;  ///< 16-bit weights, d and every m_e multiples of 8
  TileKernels tiles_ = TileKernels::kAuto;
  bool wgmma_ready_ = false;        ///< kWgmma checked and its kernels' shared memory limit raised
  bool overlap_supported_ = false;  ///< the GPU's compute capability is 9.0 or later
  bool overlap_launches_ = false;
  int few_rows_ = kFewRows;  ///< experts with 1..few_rows_ rows take the matrix-vector kernels
  Index capacity_ = 0;
  Index last_tokens_ = -1;  ///< T of the last forward queued; -1 before the first
  DeviceRouterOptions opt_;
  DeviceBuffer<float> router_;
  DeviceBuffer<DW> gate_, up_, down_;
  DeviceBuffer<long long> weight_offset_;
  DeviceBuffer<int> hidden_;
  // Workspace (reserve).
  DeviceBuffer<float> logits_, weights_, h_, y_rows_;
  DeviceBuffer<float> x_staging_, y_staging_;  // the host forward's copies of x and y
  DeviceBuffer<DW> x_rounded_, h_rounded_;     // the pipelined tiles' operands (pipelined_fits_)
  DeviceBuffer<int> ids_, counts_, few_experts_, num_few_;
  DeviceBuffer<long long> offsets_, tile_offsets_, sorted_pair_, row_of_;
  DeviceBuffer<unsigned> bad_token_;
};

}  // namespace moe::cuda
