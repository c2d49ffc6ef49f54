// Emulation shim (tests/cuda/emulator): the WMMA subset moe's tensor-core tiles use (16 x 16 x 16,
// bf16 or fp16 inputs, float accumulators). As on the GPU, a fragment is spread over the warp's lanes and
// the element-to-lane map is opaque (here every fragment uses the layout of the tensor cores' m16n8
// accumulators, twice: see row_of); mma_sync is a warp collective. It sums each element's 16 products in k order
// in float (the tensor cores' own order and rounding differ: tests bound that difference). The
// pointer and stride rules of the CUDA guide are checked.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
constexpr int kPerLane = 8;  // 256 elements over 32 lanes

inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "CUDA emulator: WMMA misuse: %s (block %u, thread %u)\n", what, blockIdx.x,
                 threadIdx.x);
    std::abort();
  }
}
/// Row and column of element i of the calling lane's share: lane l holds rows l / 4 and l / 4 + 8,
/// columns 2·(l % 4) and the next, of the left 16 x 8 half and of the right one (the m16n8
/// accumulator layout of sm_80 and later). What matters is that a lane's elements are not a run of
/// one row: a kernel that stores a fragment to shared memory and reads it back by rows without a
/// warp barrier between then reads other lanes' elements, here as on a GPU.
inline int row_of(int i) { return static_cast<int>(threadIdx.x % 32) / 4 + 8 * (i / 2 % 2); }
inline int col_of(int i) { return 8 * (i / 4) + 2 * static_cast<int>(threadIdx.x % 32 % 4) + i % 2; }
inline float widen(float v) { return v; }
inline float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float widen(__half v) { return __half2float(v); }
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has the 16 x 16 x 16 shape only");

 public:
  static constexpr int num_elements = detail::kPerLane;
  T x[num_elements];
};

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T v) {
  for (T& e : f.x) e = v;
}

/// A or B from memory (row_major: element (r, c) at p[r·ldm + c]; col_major: at p[c·ldm + r]).
template <class Use, class T, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  detail::require(reinterpret_cast<std::uintptr_t>(p) % 32 == 0,
                  "load_matrix_sync: pointer not 256-bit aligned");
  detail::require(ldm % (16 / sizeof(T)) == 0, "load_matrix_sync: ldm not a multiple of 16 bytes");
  for (int i = 0; i < detail::kPerLane; ++i) {
    const int r = detail::row_of(i), c = detail::col_of(i);
    f.x[i] = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  detail::require(reinterpret_cast<std::uintptr_t>(p) % 32 == 0,
                  "store_matrix_sync: pointer not 256-bit aligned");
  detail::require(ldm % 4 == 0, "store_matrix_sync: ldm not a multiple of 16 bytes");
  for (int i = 0; i < detail::kPerLane; ++i) {
    const int r = detail::row_of(i), c = detail::col_of(i);
    p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[i];
  }
}

/// d = a·b + c, a warp collective: the lanes pool their shares, then each computes its own.
template <class T, class LayoutA, class LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  moe_emulation::WarpScratch& w = moe_emulation::warp_scratch();
  for (int i = 0; i < detail::kPerLane; ++i) {
    const int at = detail::row_of(i) * 16 + detail::col_of(i);
    w.a[at] = detail::widen(a.x[i]);
    w.b[at] = detail::widen(b.x[i]);
    w.c[at] = c.x[i];
  }
  moe_emulation::sync_warp();
  float out[detail::kPerLane];
  for (int i = 0; i < detail::kPerLane; ++i) {
    const int r = detail::row_of(i), n = detail::col_of(i);
    float acc = w.c[r * 16 + n];
    for (int k = 0; k < 16; ++k) acc = std::fma(w.a[r * 16 + k], w.b[k * 16 + n], acc);
    out[i] = acc;
  }
  moe_emulation::sync_warp();  // every lane has read the pool before the next mma_sync rewrites it
  for (int i = 0; i < detail::kPerLane; ++i) d.x[i] = out[i];
}

}  // namespace nvcuda::wmma
