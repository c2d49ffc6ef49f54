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
// vectors of 16, which padding makes wasteful for a handful of rows). Value determined
// experimentally (bench/RESULTS.md, "MOE_FEW_ROWS").
#ifndef MOE_FEW_ROWS
#define MOE_FEW_ROWS 8
#endif

// Up to MOE_PANEL_OUTER_ROWS token rows (padded to whole vectors), many_rows_matmul runs each
// weight panel through its whole depth before the next (one contiguous run per weight column);
// above, each depth block through all panels (detail::kPanelOuterRows). Same sums, same bits; 0
// turns it off. Value determined experimentally (bench/RESULTS.md, "MOE_PANEL_OUTER_ROWS").
#ifndef MOE_PANEL_OUTER_ROWS
#define MOE_PANEL_OUTER_ROWS 32
#endif

// With bf16 weights on a CPU with AVX512-BF16 (compiled with e.g. -march=native), the prefill
// kernel multiplies bf16 pairs (vdpbf16ps, float sums): the activations are rounded to bf16 (round
// to nearest even) for those products, as PyTorch's and llama.cpp's bf16 paths do, for twice the
// products per instruction. Define MOE_BF16_DOT 0 to keep every activation in float instead
// (the result is then bitwise that of float weights holding the same values). The pairs pay on
// AMD's Zen 4 and Zen 5 (about twice the float FMA rate) but not on Intel's cores since Sapphire
// Rapids, whose float FMAs are faster than their pairs (bench/RESULTS.md, "On the Intel host").
// So the default follows AVX512-FP16, which those Intel cores have and the Zens lack: with it 0,
// without it 1. Define it to choose.
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
