#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <moe/io/hf_llama.hpp>
#include <moe/io/safetensors.hpp>
#include <string>

using namespace moe;

namespace {

/// A file in the temp directory, removed at scope exit.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& bytes) {
    char name[] = "/tmp/moe_st_XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    close(fd);
    path = name;
  }
  ~TempFile() { std::remove(path.c_str()); }
};

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}
/// header JSON + data buffer → safetensors bytes. The header is padded with spaces to a multiple
/// of 8 bytes, as Hugging Face's writer does, so the data buffer starts aligned.
std::string file_bytes(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}
template <class T>
std::string raw(std::initializer_list<T> v) {
  std::string s;
  for (T x : v) s.append(reinterpret_cast<const char*>(&x), sizeof x);
  return s;
}

// A valid file: F32 [2,3], F16 [6], BF16 [2], I32 [3], plus metadata.
const std::string kHeader = R"({"__metadata__":{"format":"pt"},)"
                            R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                            R"("h":{"dtype":"F16","shape":[6],"data_offsets":[24,36]},)"
                            R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[36,40]},)"
                            R"("i":{"dtype":"I32","shape":[3],"data_offsets":[40,52]}})";
const std::string kData = raw<float>({1, 2, 3, 4, 5, 6}) +
                          raw<std::uint16_t>({0x3C00, 0xC000, 0x0001, 0x7C00, 0x7BFF, 0x3555}) +
                          raw<std::uint16_t>({0x3F80, 0x4049}) + raw<std::int32_t>({7, -8, 9});

std::string valid_bytes() { return file_bytes(kHeader, kData); }

void expect_error(const std::string& bytes, const std::string& fragment) {
  TempFile f(bytes);
  CHECK_THROWS_WITH(SafeTensorsFile(f.path), Catch::Contains(fragment));
}

}  // namespace

TEST_CASE("safetensors: a valid file gives typed views and conversions", "[safetensors]") {
  TempFile f(valid_bytes());
  const SafeTensorsFile st(f.path);
  CHECK(st.names() == std::vector<std::string>{"b", "h", "i", "w"});
  CHECK(st.metadata().at("format") == "pt");
  const auto w = st.matrix<float>("w");
  CHECK(w.rows() == 2);
  CHECK(w(1, 0) == 4.0f);                                                                // row-major [2,3]
  CHECK(static_cast<const void*>(w.data()) == static_cast<const void*>(st.bytes("w")));  // zero copy
  CHECK(st.vector<std::int32_t>("i")(1) == -8);
  const auto h = st.to_float("h");
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -2.0f);
  CHECK(h[2] == std::ldexp(1.0f, -24));  // smallest subnormal half
  CHECK(std::isinf(h[3]));
  CHECK(h[4] == 65504.0f);         // largest half
  CHECK(h[5] == 0.333251953125f);  // 0x3555
  const auto b = st.to_float("b");
  CHECK(b[0] == 1.0f);
  CHECK(b[1] == 3.140625f);  // 0x4049
  CHECK(st.to_float("w")[5] == 6.0f);
  CHECK(st.info("h").dtype == Dtype::F16);
  CHECK(st.info("w").numel() == 6);
}

TEST_CASE("safetensors: wrong requests name the tensor and the problem", "[safetensors]") {
  TempFile f(valid_bytes());
  const SafeTensorsFile st(f.path);
  CHECK_THROWS_WITH(st.info("nope"), Catch::Contains("tensor 'nope' not found"));
  CHECK_THROWS_WITH(st.matrix<float>("h"), Catch::Contains("'h' has 1 dimensions, expected 2"));
  CHECK_THROWS_WITH(st.vector<float>("h"), Catch::Contains("'h' is F16, not the requested type"));
  CHECK_THROWS_WITH(st.vector<double>("w"), Catch::Contains("'w' is F32"));
  CHECK_THROWS_WITH(st.to_float("i"), Catch::Contains("'i' has dtype I32"));
  CHECK_THROWS_WITH(SafeTensorsFile("/nonexistent/x.safetensors"), Catch::Contains("cannot open"));
}

TEST_CASE("safetensors: a misaligned F32 tensor refuses a view but converts", "[safetensors]") {
  const std::string header = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                             R"("f":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})";
  // The data buffer starts 8-aligned (file_bytes pads the header); "f" sits at +2.
  TempFile f(file_bytes(header, std::string("\x01\x02", 2) + raw<float>({2.5f})));
  const SafeTensorsFile st(f.path);
  CHECK_THROWS_WITH(st.vector<float>("f"), Catch::Contains("not aligned"));
  CHECK(st.to_float("f")[0] == 2.5f);
  CHECK(st.vector<std::uint8_t>("a")(1) == 2);
}

TEST_CASE("safetensors: corrupt, truncated and inconsistent files are refused", "[safetensors]") {
  expect_error("", "too short for the 8-byte header length");
  expect_error("abc", "too short");
  expect_error(le64(1000) + "{}", "declares a 1000-byte header but only 2 bytes follow");
  expect_error(le64(std::uint64_t{1} << 40) + "{}", "over the 100000000-byte limit");
  expect_error(le64(5) + "{\"w\":", "header is not valid JSON");
  expect_error(file_bytes("[1,2]", ""), "header is not a JSON object");
  expect_error(file_bytes(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", "abcd"),
               "unknown dtype \"F33\"");
  expect_error(file_bytes(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "abcd"), "no string 'dtype'");
  expect_error(file_bytes(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"),
               "not a non-negative integer");
  expect_error(file_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "abcd"),
               "holds 4 bytes but dtype F32 x shape needs 8");
  expect_error(file_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "abcd"),
               "begin > end");
  expect_error(file_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "abcd"), "data_offsets");
  expect_error(file_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "abcd"),
               "ends at byte 8 of a 4-byte data buffer");
  expect_error(file_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd"),
               "truncated file");
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          "abcdefgh"),
               "overlap");
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "abcdefgh"),
               "4 unused bytes before tensor 'a'");
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcdefgh"),
               "4 bytes after the last tensor");
  expect_error(file_bytes(R"({"__metadata__":{"k":1}})", ""), "metadata 'k' is not a string");
  expect_error(
      file_bytes(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})", "abcd"),
      "too large");
}

TEST_CASE("safetensors: every truncation and single-byte corruption fails cleanly", "[safetensors]") {
  // Never a crash or an out-of-bounds read (the sanitizer build runs this too): either a valid
  // file or a moe::Error.
  const std::string good = valid_bytes();
  for (std::size_t n = 0; n < good.size(); ++n) {
    TempFile f(good.substr(0, n));
    CHECK_THROWS_AS(SafeTensorsFile(f.path), Error);
  }
  for (std::size_t i = 0; i < good.size() - kData.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x5A);
    TempFile f(bad);
    try {
      const SafeTensorsFile st(f.path);
      for (const auto& name : st.names()) (void)st.info(name).numel();  // still self-consistent
    } catch (const Error&) {
    }
  }
}

TEST_CASE("hf_llama: missing tensors and inconsistent shapes are named", "[safetensors]") {
  const std::string header =
      R"({"model.layers.0.mlp.gate_proj.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[24,48]},)"
      R"("model.layers.0.mlp.down_proj.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[48,72]}})";
  TempFile f(file_bytes(header, std::string(72, '\0')));
  const SafeTensorsFile st(f.path);
  CHECK_THROWS_WITH(llama_ffn_view(st, 0), Catch::Contains("down_proj must be [d, d_h] = [3, 2]"));
  CHECK_THROWS_WITH(llama_ffn_view(st, 1),
                    Catch::Contains("'model.layers.1.mlp.gate_proj.weight' not found"));
}
