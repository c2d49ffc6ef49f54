// moe — a software prefetch hint at an offset from a weight array.
#pragma once

#include <cstdint>

#include "moe/types.hpp"

namespace moe::detail {

/// Where a prefetched line goes.
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
  __builtin_prefetch(reinterpret_cast<const void*>(a), 0, static_cast<int>(To));  // NOLINT(performance-no-int-to-ptr)
#else
  (void)base, (void)bytes;
#endif
}

}  // namespace moe::detail
