// moe — a software prefetch hint at an offset from a weight array.
#pragma once

#include <cstdint>

#include "moe/core/types.hpp"

namespace moe::detail {

/// Where a prefetched line goes; the value is __builtin_prefetch's locality (x86: 3 = prefetcht0,
/// 2 = prefetcht1).
enum class PrefetchTo { kL1 = 3, kL2 = 2 };

/// Hints that the line at `base` + `bytes` will be read soon. A hint only: it cannot fault, and
/// the address is formed as an integer, so the offset may reach past the array's end (the kernels
/// prefetch where the stream goes next, which may be nowhere) without making a pointer there.
template <PrefetchTo To = PrefetchTo::kL1>
void prefetch_at(const void* base, Index bytes) {
#if defined(__GNUC__)
  const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(base) + static_cast<std::uintptr_t>(bytes);
  // The integer-to-pointer cast only feeds a prefetch hint, so the optimisation it blocks does not
  // apply; pointer arithmetic past the array's end would be undefined behaviour instead.
  const void* line = reinterpret_cast<const void*>(a);  // NOLINT(performance-no-int-to-ptr)
  __builtin_prefetch(line, 0, static_cast<int>(To));
#else
  (void)base, (void)bytes;
#endif
}

}  // namespace moe::detail
