// moe — a header-only safetensors writer, the counterpart of safetensors.hpp. Collects tensors,
// then writes the file in one go to a temporary name beside the target and renames it, so a
// failed or interrupted write never leaves a half-written file under the real name.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/detail/half.hpp"
#include "moe/core/types.hpp"
#include "moe/io/safetensors.hpp"

namespace moe {

class SafeTensorsWriter {
 public:
  /// Adds a tensor from raw little-endian bytes (copied). Throws moe::Error for a duplicate or
  /// reserved name, a negative dimension, or a byte count that does not match dtype x shape.
  void add_bytes(const std::string& name, Dtype dtype, std::vector<std::int64_t> shape, const void* data,
                 std::size_t bytes) {
    MOE_CHECK(!name.empty() && name != "__metadata__",
              "SafeTensorsWriter: '" << name << "' is not a valid tensor name");
    MOE_CHECK(tensors_.count(name) == 0, "SafeTensorsWriter: tensor '" << name << "' added twice");
    std::size_t expect = dtype_size(dtype);
    for (const auto dim : shape) {
      MOE_CHECK(dim >= 0, "SafeTensorsWriter: tensor '" << name << "' has negative dimension " << dim);
      expect *= static_cast<std::size_t>(dim);
    }
    MOE_CHECK(bytes == expect, "SafeTensorsWriter: tensor '" << name << "' has " << bytes << " bytes, "
                                                             << dtype_name(dtype) << " x shape needs "
                                                             << expect);
    Entry& e = tensors_[name];
    e.dtype = dtype;
    e.shape = std::move(shape);
    e.bytes.assign(static_cast<const unsigned char*>(data), static_cast<const unsigned char*>(data) + bytes);
  }

  /// Adds a matrix as a row-major [rows, cols] tensor of dtype F32 (float), F64 (double) or I32
  /// (std::int32_t), whatever the storage order of `m`.
  template <class Derived>
  void add(const std::string& name, const Eigen::DenseBase<Derived>& m) {
    using S = typename Derived::Scalar;
    static_assert(std::is_same_v<S, float> || std::is_same_v<S, double> || std::is_same_v<S, std::int32_t>,
                  "SafeTensorsWriter::add: float, double or int32 matrices");
    const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm = m;
    const Dtype dt = std::is_same_v<S, float>    ? Dtype::F32
                     : std::is_same_v<S, double> ? Dtype::F64
                                                 : Dtype::I32;
    add_bytes(name, dt, {rm.rows(), rm.cols()}, rm.data(), sizeof(S) * static_cast<std::size_t>(rm.size()));
  }

  /// Adds float values converted to F16 or BF16 (round to nearest even), or stored as F32.
  void add_float(const std::string& name, Dtype dtype, std::vector<std::int64_t> shape, const float* data,
                 std::size_t count) {
    if (dtype == Dtype::F32) return add_bytes(name, dtype, std::move(shape), data, count * sizeof(float));
    MOE_CHECK(dtype == Dtype::F16 || dtype == Dtype::BF16,
              "SafeTensorsWriter: add_float converts to F32, F16 or BF16, not " << dtype_name(dtype));
    std::vector<std::uint16_t> half(count);
    for (std::size_t i = 0; i < count; ++i)
      half[i] = dtype == Dtype::F16 ? detail::float_to_f16(data[i]) : detail::float_to_bf16(data[i]);
    add_bytes(name, dtype, std::move(shape), half.data(), count * sizeof(std::uint16_t));
  }

  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// Writes the file: tensors ordered by decreasing dtype size, then name, so each starts aligned
  /// to its dtype (the data buffer starts 8-aligned: the header is space-padded); `path` appears
  /// only once complete (temporary file + rename). Throws moe::Error naming the path on failure.
  void write(const std::string& path) const {
    std::vector<const std::pair<const std::string, Entry>*> order;
    for (const auto& kv : tensors_) order.push_back(&kv);
    std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
      return dtype_size(a->second.dtype) > dtype_size(b->second.dtype);
    });
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto* kv : order) {
      const Entry& e = kv->second;
      header[kv->first] = {{"dtype", dtype_name(e.dtype)},
                           {"shape", e.shape},
                           {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');

    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    MOE_CHECK(f, "SafeTensorsWriter: cannot create '" << tmp << "': " << std::strerror(errno));
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((text.size() >> (8 * i)) & 0xFF);
    bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (const auto* kv : order) {
      const auto& b = kv->second.bytes;
      ok = ok && (b.empty() || std::fwrite(b.data(), 1, b.size(), f) == b.size());
    }
    ok = (std::fflush(f) == 0) && ok;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      std::remove(tmp.c_str());
      MOE_CHECK(false, "SafeTensorsWriter: cannot write '" << path << "': " << std::strerror(err));
    }
  }

 private:
  struct Entry {
    Dtype dtype = Dtype::F32;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> bytes;
  };
  std::map<std::string, Entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moe
