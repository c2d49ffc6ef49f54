// Compiled, never run: MOE_BF16_DOT's default for a target ISA (config.hpp). tests/CMakeLists.txt
// builds this file for an Intel-like target (AVX512-BF16 and AVX512-FP16: the bf16 pairs off) and a
// Zen 4/5-like one (AVX512-BF16 alone: on), each with the value it expects; a wrong default fails
// the build.
#include <moe/core/config.hpp>

static_assert(MOE_BF16_DOT == MOE_EXPECT_BF16_DOT,
              "MOE_BF16_DOT's default for this target ISA is not the one config.hpp documents");
