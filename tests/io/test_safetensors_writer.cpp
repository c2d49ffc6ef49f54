#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <limits>
#include <moe/core/detail/rng.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/io/safetensors_writer.hpp>

using namespace moe;

namespace {

struct TempPath {
  std::string path;
  TempPath() {
    char name[] = "/tmp/moe_stw_XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    close(fd);
    path = name;
  }
  ~TempPath() { std::remove(path.c_str()); }
};

/// The exact value of a binary16 bit pattern, from the decoder (itself checked against hand
/// values in test_safetensors): the yardstick for the encoder's rounding.
double half_value(std::uint16_t h) { return static_cast<double>(detail::f16_to_float(h)); }

}  // namespace

TEST_CASE("safetensors writer round-trips through the reader", "[safetensors_writer]") {
  TempPath tmp;
  RowMatrix<float> a(2, 3);
  a << 1, 2, 3, 4, 5, 6;
  ColMatrix<double> b(2, 2);  // column-major input is written row-major
  b << 1.5, -2.5, 3.5, 4.5;
  IdMatrix ids(1, 3);
  ids << 7, -1, 3;
  const std::vector<float> h = {1.0f, -2.0f, 0.1f};
  SafeTensorsWriter w;
  w.add("a", a);
  w.add("b", b);
  w.add("ids", ids);
  w.add_float("h16", Dtype::F16, {3}, h.data(), h.size());  // 6 bytes: would misalign what follows
  w.add_float("hb", Dtype::BF16, {3}, h.data(), h.size());
  w.add_float("z", Dtype::F32, {3}, h.data(), h.size());
  w.set_metadata("format", "pt");
  w.write(tmp.path);

  const SafeTensorsFile f(tmp.path);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.matrix<float>("a") == a);
  CHECK(f.matrix<double>("b") == RowMatrix<double>(b));
  CHECK(f.matrix<std::int32_t>("ids") == ids);
  CHECK(f.info("h16").dtype == Dtype::F16);
  const auto h16 = f.to_float("h16");
  CHECK(h16[0] == 1.0f);
  CHECK(h16[1] == -2.0f);
  CHECK(h16[2] == 0.0999755859375f);             // nearest binary16 to 0.1
  CHECK(f.to_float("hb")[2] == 0.10009765625f);  // nearest bfloat16 to 0.1
  CHECK(f.vector<float>("z")(2) == 0.1f);        // zero-copy view: F32 placed before the 2-byte tensors
}

TEST_CASE("float_to_f16 inverts f16_to_float and rounds to nearest even", "[safetensors_writer]") {
  for (std::uint32_t i = 0; i < 0x10000u; ++i) {
    const auto h = static_cast<std::uint16_t>(i);
    const float f = detail::f16_to_float(h);
    if (std::isnan(f)) {
      CHECK(std::isnan(detail::f16_to_float(detail::float_to_f16(f))));
    } else if (detail::float_to_f16(f) != h) {
      FAIL("binary16 0x" << std::hex << i << " does not round-trip");
    }
  }
  // Random floats over the whole binary16 range and beyond: the result is a nearest binary16,
  // ties to the even one; past 65520 (half-way between 65504 and 2^16) it is Inf.
  detail::SplitMix64 rng(3);
  for (int trial = 0; trial < 200000; ++trial) {
    const double mag = std::ldexp(rng.uniform() + 0.5, static_cast<int>(rng.below(50)) - 30);
    const float f = static_cast<float>(trial % 2 ? -mag : mag);
    const std::uint16_t h = detail::float_to_f16(f);
    if (std::abs(f) >= 65520.0f) {
      REQUIRE(std::isinf(detail::f16_to_float(h)));
      continue;
    }
    const double err = std::abs(half_value(h) - f);
    const auto up = static_cast<std::uint16_t>(h + 1), down = static_cast<std::uint16_t>(h - 1);
    REQUIRE(err <= std::abs(half_value(up) - f));
    if ((h & 0x7FFF) != 0) REQUIRE(err <= std::abs(half_value(down) - f));
  }
  // Exact ties: 1 + 2^-11 lies half-way between 1 and 1 + 2^-10 → even (1); 1 + 3·2^-11 → 1 + 2^-9.
  CHECK(detail::float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
  CHECK(detail::float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);
  CHECK(detail::float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);      // half of the smallest subnormal
  CHECK(detail::float_to_f16(3 * std::ldexp(1.0f, -25)) == 0x0002);  // 1.5 ulp → even (2)
  CHECK(detail::float_to_f16(-std::numeric_limits<float>::infinity()) == 0xFC00);
  CHECK(detail::float_to_f16(65504.0f) == 0x7BFF);
  CHECK(detail::float_to_f16(65519.0f) == 0x7BFF);
  CHECK(detail::float_to_f16(65520.0f) == 0x7C00);
}

TEST_CASE("float_to_bf16 rounds to nearest even", "[safetensors_writer]") {
  CHECK(detail::float_to_bf16(1.0f) == 0x3F80);
  CHECK(detail::float_to_bf16(detail::bits_to_float(0x3F808000u)) == 0x3F80);  // tie → even
  CHECK(detail::float_to_bf16(detail::bits_to_float(0x3F818000u)) == 0x3F82);  // tie → even (up)
  CHECK(detail::float_to_bf16(detail::bits_to_float(0x3F808001u)) == 0x3F81);
  CHECK(detail::float_to_bf16(detail::bits_to_float(0x7F7FFFFFu)) == 0x7F80);  // FLT_MAX → Inf
  CHECK(std::isnan(detail::bf16_to_float(detail::float_to_bf16(std::nanf("")))));
  for (std::uint32_t i = 0; i < 0x10000u; ++i) {
    const float f = detail::bf16_to_float(static_cast<std::uint16_t>(i));
    if (!std::isnan(f) && detail::float_to_bf16(f) != i)
      FAIL("bfloat16 0x" << std::hex << i << " does not round-trip");
  }
}

TEST_CASE("safetensors writer refuses bad tensors and never leaves a partial file", "[safetensors_writer]") {
  SafeTensorsWriter w;
  const float v[2] = {1, 2};
  w.add_bytes("x", Dtype::F32, {2}, v, 8);
  CHECK_THROWS_WITH(w.add_bytes("x", Dtype::F32, {2}, v, 8), Catch::Contains("'x' added twice"));
  CHECK_THROWS_WITH(w.add_bytes("__metadata__", Dtype::F32, {2}, v, 8),
                    Catch::Contains("not a valid tensor name"));
  CHECK_THROWS_WITH(w.add_bytes("y", Dtype::F32, {3}, v, 8),
                    Catch::Contains("has 8 bytes, F32 x shape needs 12"));
  CHECK_THROWS_WITH(w.add_bytes("y", Dtype::F32, {-2}, v, 8), Catch::Contains("negative dimension"));
  CHECK_THROWS_WITH(w.add_float("y", Dtype::I32, {2}, v, 2), Catch::Contains("not I32"));
  CHECK_THROWS_WITH(w.write("/nonexistent-dir/out.safetensors"), Catch::Contains("cannot create"));

  // Renaming onto a directory fails: the temporary file is removed, the directory untouched.
  char dir[] = "/tmp/moe_stw_dir_XXXXXX";
  REQUIRE(mkdtemp(dir));
  CHECK_THROWS_WITH(w.write(dir), Catch::Contains("cannot write"));
  struct stat st {};
  CHECK(stat((std::string(dir) + ".tmp." + std::to_string(getpid())).c_str(), &st) != 0);
  rmdir(dir);

  // Overwriting replaces the old file whole.
  TempPath tmp;
  w.write(tmp.path);
  SafeTensorsWriter w2;
  w2.add_bytes("only", Dtype::F32, {1}, v, 4);
  w2.write(tmp.path);
  const SafeTensorsFile f(tmp.path);
  CHECK(f.names() == std::vector<std::string>{"only"});
}
