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

#include "moe/cuda/round_to.cuh"
#include "moe/math.hpp"

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

/// The router, one block per token (blockDim a multiple of 32): logits(t, e) = Σ_i x(t, i)·W_r(i, e)
/// — the block's warps take experts in turn, lane l sums i ≡ l (mod 32) in order, then warp_sum —
/// then one thread routes the token (route_one). One kernel, not two: at T = 1 a launch costs about
/// what the whole routing does. w_router: column e at w_router + e·d (d x N, column-major, as
/// RouterGate stores it). logits (T x N) are kept for inspection.
/// x_rounded (T x d, R a 16-bit type; null: none): x rounded to R, the pipelined tensor-core tiles'
/// operand (expert_mma_pipelined.cuh), written here because this kernel reads x anyway. R = float
/// writes nothing.
template <class R>
__global__ void route_tokens(const float* x, const float* w_router, long long d, int n, int k,
                             DeviceRouterOptions opt, float* logits, int* ids, float* weights, R* x_rounded) {
  __shared__ float z[kMaxExperts];
  const long long t = blockIdx.x;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int warps = static_cast<int>(blockDim.x / 32);
  const float* xt = x + t * d;
  if constexpr (!std::is_same_v<R, float>) {
    if (x_rounded)
      for (long long i = threadIdx.x; i < d; i += blockDim.x) x_rounded[t * d + i] = round_to<R>(xt[i]);
  }
  for (int e = warp; e < n; e += warps) {
    const float* w = w_router + e * d;
    float s = 0.0f;
    for (long long i = lane; i < d; i += 32) s = fmaf(xt[i], w[i], s);
    s = warp_sum(s);
    if (lane == 0) {
      z[e] = s;
      logits[t * n + e] = s;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) route_one(z, n, k, opt, ids + t * k, weights + t * k);
}

}  // namespace kernels
}  // namespace moe::cuda
