// Small helpers shared by the command-line tools in examples/ (moe_convert, moe_eval, moe_generate).
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <moe/core/config.hpp>
#include <string>

namespace moe::tool {

/// A one-line progress bar on stderr when it is a terminal; silent otherwise (logs stay clean).
class Progress {
 public:
  Progress(std::string what, int total) : what_(std::move(what)), total_(total), tty_(::isatty(2) != 0) {}
  void step(int done, const std::string& note) const {
    if (!tty_) return;
    const int width = 30, filled = total_ > 0 ? width * done / total_ : width;
    std::fprintf(stderr, "\r%s [%s%s] %d/%d %-28s", what_.c_str(),
                 std::string(static_cast<std::size_t>(filled), '#').c_str(),
                 std::string(static_cast<std::size_t>(width - filled), '.').c_str(), done, total_,
                 note.c_str());
    if (done == total_) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  std::string what_;
  int total_;
  bool tty_;
};

/// An integer option's value; throws moe::Error naming the flag otherwise.
inline std::int64_t parse_int(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  MOE_CHECK(!v.empty() && *end == '\0', flag << " expects an integer, got '" << v << "'");
  return x;
}

/// A real option's value (finite); throws moe::Error naming the flag otherwise.
inline double parse_double(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  MOE_CHECK(!v.empty() && *end == '\0' && std::isfinite(x),
            flag << " expects a finite number, got '" << v << "'");
  return x;
}

}  // namespace moe::tool
