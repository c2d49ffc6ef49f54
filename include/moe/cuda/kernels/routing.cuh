// moe — router kernels of the CUDA path: logits z = x·W_r, then per token the softmax over N,
// the top-k (ties to the lower expert index, slots best first) and the weights of formula (2).
//
// The same semantics as route() with RouterOptions::top_k_softmax (router.hpp): the device code
// calls the very softmax and top_k of math.hpp that the CPU router calls. The logits are summed in
// another order than Eigen's product, so a token whose k-th and (k+1)-th logits differ by a
// rounding may pick the other expert; given the same logits, the choice is the same.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "moe/core/math.hpp"
#include "moe/cuda/arch/launch.cuh"
#include "moe/cuda/kernels/round_to.cuh"

namespace moe::cuda {

/// Largest N and k the routing kernel handles (its per-thread arrays).
constexpr int kMaxExperts = 256;
constexpr int kMaxTopK = 32;

/// The router switches the CUDA path supports (see check_supported in moe_layer.cuh): softmax
/// over all N, top-k on the scores or on the logits, weights renormalised over the k or not, then
/// scaled.
struct DeviceRouterOptions {
  bool select_on_scores = false;  ///< top-k of the softmax scores (else of the logits)
  bool renormalize = false;       ///< w / (sum of the k w + renorm_epsilon)
  float renorm_epsilon = 0.0f;
  float routed_scaling_factor = 1.0f;
};

namespace kernels {

/// Fixed butterfly sum over a warp: the same bits on every run.
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// A token's routing from its n logits z: softmax, top-k, weights into id[0..k), w[0..k). A NaN or
/// infinite logit drops every slot of the token (id -1, weight 0, so the later kernels stay in
/// bounds); group_by_expert (permute.cuh) reports the smallest such token to the host.
__device__ inline void route_one(const float* z, int n, int k, const DeviceRouterOptions& opt, int* id,
                                 float* w) {
  for (int e = 0; e < n; ++e)
    if (!std::isfinite(z[e])) {
      for (int s = 0; s < k; ++s) {
        id[s] = -1;
        w[s] = 0.0f;
      }
      return;
    }
  float p[kMaxExperts];
  softmax(z, n, p);
  int best[kMaxTopK];
  float value[kMaxTopK];
  top_k(opt.select_on_scores ? p : z, n, k, best, value);
  float v[kMaxTopK];
  for (int s = 0; s < k; ++s) v[s] = p[best[s]];
  if (opt.renormalize) {
    float sum = 0.0f;
    for (int s = 0; s < k; ++s) sum += v[s];
    sum += opt.renorm_epsilon;
    for (int s = 0; s < k; ++s) v[s] /= sum;
  }
  if (opt.routed_scaling_factor != 1.0f)
    for (int s = 0; s < k; ++s) v[s] *= opt.routed_scaling_factor;
  for (int s = 0; s < k; ++s) {
    id[s] = best[s];
    w[s] = v[s];
  }
}

/// Tokens and experts one block of route_tokens takes per pass over x and W_r (from T = 8 on;
/// below that a block takes one token), and its threads.
constexpr int kRouteTokens = 8;
constexpr int kRouteExperts = 8;
constexpr int kRouteThreads = 256;
static_assert(kRouteThreads >= kRouteTokens * kRouteExperts, "a thread per (token, expert) adds the warps");

/// Chunks a thread of route_tokens loads before it multiplies any. A block of one token has the
/// registers for 4, which at d = 4096 (1024 chunks of 4 floats) are all of a thread's chunks,
/// issued together rather than in four rounds (T = 1 waits on them all).
template <int kTokens>
constexpr int kRouteDepth = kTokens == 1 ? 4 : 1;

/// i, or the last index n - 1 once i is past it: where a value past the end is loaded but never
/// used, so that no branch separates a thread's loads (route_tokens, combine).
__device__ inline long long in_bounds(long long i, long long n) { return i < n ? i : n - 1; }

/// V consecutive floats at p (16-byte aligned when V = 4).
template <int V>
__device__ inline void load_chunk(const float* p, float (&out)[V]) {
  if constexpr (V == 4) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
    static_assert(V == 1, "chunks of 1 or 4 floats");
    out[0] = __ldg(p);
  }
}

/// The router: logits(t, e) = Σ_i x(t, i)·W_r(i, e), then per token its softmax, top-k and
/// weights (route_one). One kernel, not two: at T = 1 a launch costs about what the routing does.
/// A block takes kTokens tokens (1 or kRouteTokens); for every kRouteExperts experts, thread j sums
/// the chunks c ≡ j (mod kRouteThreads) of V floats in order, loading each expert's chunk of W_r
/// once for all the block's tokens; then a fixed butterfly (warp_sum) and the warps in order add the
/// threads. A thread issues all the loads of kRouteDepth chunks (every expert's and every token's)
/// before it multiplies, so they can be in flight together, where a load of x behind each token's
/// products waited for that token's turn (the PTX issues them together; the time is unmeasured
/// without a GPU). W_r is read once per block (not once per token at T >= 8: 128 KB per token at
/// N = 8, d = 4096), and a logit is the same function of its token's row whatever T is: the same
/// chunks in the same order, whatever kTokens.
/// Grid: ceil(tokens / kTokens) blocks of kRouteThreads threads. kVec: chunks of 4 floats, so d a
/// multiple of 4 and x 16-byte aligned. w_router: column e at w_router + e·d (d x N,
/// column-major, as RouterGate stores it). logits (T x N) are kept for inspection.
/// x_rounded (T x d, R a 16-bit type; null: none): x rounded to R, the pipelined tensor-core tiles'
/// operand (expert_mma_pipelined.cuh), written here because this kernel reads x anyway. R = float
/// writes nothing.
/// One function past 60 lines on purpose: its phases share registers and barriers, and how a
/// split kernel is compiled (registers, spills) can only be checked on a GPU.
template <class R, bool kVec, int kTokens>
__global__ void __launch_bounds__(kRouteThreads)
    // NOLINTNEXTLINE(readability-function-size): one kernel, as its comment says
    route_tokens(const float* x, long long tokens, const float* w_router, long long d, int n, int k,
                 DeviceRouterOptions opt, float* logits, int* ids, float* weights, R* x_rounded) {
  wait_for_previous_kernel();
  static_assert(kTokens == 1 || kTokens == kRouteTokens, "one token a block, or kRouteTokens");
  constexpr int V = kVec ? 4 : 1, kDepth = kRouteDepth<kTokens>;
  constexpr int kWarps = kRouteThreads / 32;
  __shared__ float partial[kWarps][kTokens][kRouteExperts];
  __shared__ float z[kTokens][kMaxExperts];
  const long long t0 = static_cast<long long>(blockIdx.x) * kTokens;
  const int here = static_cast<int>(tokens - t0 < kTokens ? tokens - t0 : kTokens);
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const long long chunks = d / V;
  for (int e0 = 0; e0 < n; e0 += kRouteExperts) {
    const int experts = n - e0 < kRouteExperts ? n - e0 : kRouteExperts;
    float acc[kTokens][kRouteExperts] = {};
    for (long long c0 = tid; c0 < chunks; c0 += kDepth * kRouteThreads) {
      // The loads, unconditionally: a chunk, expert or token past the end reads the last one in
      // bounds instead (in_bounds; its products are never used).
      float w[kDepth][kRouteExperts][V], xv[kDepth][kTokens][V];
#pragma unroll
      for (int u = 0; u < kDepth; ++u) {
        const long long c = in_bounds(c0 + u * kRouteThreads, chunks);
#pragma unroll
        for (int g = 0; g < kRouteExperts; ++g)
          load_chunk<V>(w_router + in_bounds(e0 + g, n) * d + c * V, w[u][g]);
#pragma unroll
        for (int j = 0; j < kTokens; ++j) load_chunk<V>(x + (t0 + in_bounds(j, here)) * d + c * V, xv[u][j]);
      }
      // The products, chunk by chunk in order.
#pragma unroll
      for (int u = 0; u < kDepth; ++u) {
        const long long c = c0 + u * kRouteThreads;
        if (c >= chunks) break;
#pragma unroll
        for (int j = 0; j < kTokens; ++j) {
          if (j >= here) break;
          if constexpr (!std::is_same_v<R, float>) {
            if (x_rounded && e0 == 0)
#pragma unroll
              for (int v = 0; v < V; ++v) x_rounded[(t0 + j) * d + c * V + v] = round_to<R>(xv[u][j][v]);
          }
#pragma unroll
          for (int g = 0; g < kRouteExperts; ++g)
#pragma unroll
            for (int v = 0; v < V; ++v) acc[j][g] = fmaf(xv[u][j][v], w[u][g][v], acc[j][g]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kTokens; ++j) {
      if (j >= here) break;
#pragma unroll
      for (int g = 0; g < kRouteExperts; ++g) {
        if (g >= experts) break;
        const float s = warp_sum(acc[j][g]);
        if (lane == 0) partial[warp][j][g] = s;
      }
    }
    __syncthreads();
    const int j = tid / kRouteExperts, g = tid % kRouteExperts;
    if (j < here && g < experts) {
      float s = 0.0f;
      for (int wp = 0; wp < kWarps; ++wp) s += partial[wp][j][g];
      z[j][e0 + g] = s;
      logits[(t0 + j) * n + e0 + g] = s;
    }
    __syncthreads();  // partial is rewritten by the next experts; z is read below
  }
  if (tid < here) route_one(z[tid], n, k, opt, ids + (t0 + tid) * k, weights + (t0 + tid) * k);
}

}  // namespace kernels
}  // namespace moe::cuda
