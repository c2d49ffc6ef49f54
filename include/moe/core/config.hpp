// moe — configuration, macros and the error type. Every MOE_ macro is defined here.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0

// Math shared by host and device code (softmax, SiLU, top-k over N values) is written once and
// annotated MOE_HOST_DEVICE; it expands to nothing unless compiled by nvcc.
#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

// Up to MOE_FEW_ROWS token rows per expert (or dense call), float matmuls run few_rows_matmul (each
// weight read once for all rows); above, many_rows_matmul (a GEMM over token rows padded to whole
// vectors of 16, which padding makes wasteful for a handful of rows). 8 since the 4 x 6 decode tile
// (2026-11-29; 4 before, when 8 rows ran as three tiles of 3 x 8): moe_bench dense
// d = 4096, m = 11008, T = 8 cold, 2 cores AVX-512, three alternating rounds 4 / 8 — bf16
// 19.7 / 19.7 / 20.2 -> 16.4 / 14.1 / 13.6 ms, f32 26.1 / 29.0 / 28.6 -> 27.5 / 27.8 / 26.2 (the
// figures of the README and commit 9081858); T = 12 and 16 were slower through few_rows_matmul
// (f32 27 -> 36-45 ms). MoE N = 8 k = 2 at T = 32 (experts with 6-13 tokens): bf16 3 of 3 rounds
// ~5% faster, f32 within noise.
#ifndef MOE_FEW_ROWS
#define MOE_FEW_ROWS 8
#endif

// Up to MOE_PANEL_OUTER_ROWS token rows (padded to whole vectors), many_rows_matmul runs each
// weight panel through its whole depth before the next (one contiguous run per weight column);
// above, each depth block through all panels (detail::kPanelOuterRows). Same sums, same bits; 0
// turns it off. Zen 4, 2 threads, moe_bench alternating 0 / 32 three rounds (2026-11-29):
// N = 8 k = 2 T = 64 (experts of 14-19 rows) bf16 18.2-19.1 -> 17.7-18.0 ms, f32 32.6-33.9 ->
// 32.2-33.0; Mixtral T = 64 f32 328-334 -> 316-318; N = 16 k = 4 T = 64 unchanged. 16 measured as
// 32; at T = 96 and 128 (experts of 20-39 rows) 0 and 32 are within noise.
#ifndef MOE_PANEL_OUTER_ROWS
#define MOE_PANEL_OUTER_ROWS 32
#endif

// With bf16 weights on a CPU with AVX512-BF16 (compiled with e.g. -march=native), the prefill
// kernel multiplies bf16 pairs (vdpbf16ps, float sums): the activations are rounded to bf16 (round
// to nearest even) for those products, as PyTorch's and llama.cpp's bf16 paths do, for twice the
// products per instruction. Define MOE_BF16_DOT 0 to keep every activation in float instead
// (the result is then bitwise that of float weights holding the same values). The pairs pay on
// Zen 4 and Zen 5 (about twice the float FMA rate) but not on every CPU that has them: on an Intel
// Xeon, family 6 model 207 (2026-12-02), MOE_BF16_DOT 0 took the bf16 MoE layer at T = 512 from
// 268 to 204 ms (moe_bench, N = 8 k = 2, medians of three alternating rounds; README, "On the
// Intel host"). So the default follows AVX512-FP16, which that Xeon has (Intel's cores since
// Sapphire Rapids) and Zen 4 and Zen 5 lack: with it 0, without it 1. A CPU with AVX512-BF16 and
// no AVX512-FP16 that is not a Zen (Cooper Lake) gets the pairs, unmeasured. Define it to choose.
#ifndef MOE_BF16_DOT
#if defined(__AVX512FP16__)
#define MOE_BF16_DOT 0
#else
#define MOE_BF16_DOT 1
#endif
#endif

// A ThreadPool thread with nothing to do polls for up to MOE_POOL_SPIN_US microseconds before it
// sleeps on a condition variable (see ThreadPool::spin_until); 0 sleeps at once.
#ifndef MOE_POOL_SPIN_US
#define MOE_POOL_SPIN_US 100
#endif

namespace moe {

/// The one exception type the library throws. The message names the problem (which argument,
/// which shape, which tensor) and the source location of the failed check.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void throw_error(const char* file, int line, const std::string& msg) {
  std::ostringstream os;
  os << "moe: " << msg << " [" << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

}  // namespace moe

/// MOE_CHECK(cond, msg): throws moe::Error with `msg` (a stream expression, e.g.
/// "k=" << k << " exceeds N=" << n) and the file and line when `cond` is false.
/// Host code only; device code never throws.
// NOLINTBEGIN(bugprone-macro-parentheses): msg is a << chain, parentheses would break it
#define MOE_CHECK(cond, msg)                                               \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::ostringstream moe_check_os_;                                    \
      moe_check_os_ << msg;                                                \
      ::moe::detail::throw_error(__FILE__, __LINE__, moe_check_os_.str()); \
    }                                                                      \
  } while (0)
// NOLINTEND(bugprone-macro-parentheses)
