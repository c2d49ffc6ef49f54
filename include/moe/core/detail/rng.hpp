// moe — a fully specified random generator, so a seed gives the same partition on every platform
// and standard library (std::shuffle and std::*_distribution are implementation-defined).
// Integer draws are exact everywhere; normal() goes through std::log/std::cos, so its last bits
// follow the platform's libm (fine for example data, never used for partitions).
#pragma once

#include <cmath>
#include <cstdint>

namespace moe::detail {

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a Weyl constant and mixed.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  /// Uniform integer in [0, n), n > 0, without modulo bias (rejection of the short last range).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    std::uint64_t r;
    do r = next();
    while (r >= limit);
    return r % n;
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Standard normal by Box–Muller (one draw per call; the pair's second value is discarded so
  /// the sequence depends on nothing but the call count).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t state_;
};

}  // namespace moe::detail
