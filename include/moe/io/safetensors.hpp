// moe — a header-only safetensors reader: memory-maps the file, validates it completely before
// handing anything out, and exposes tensors as typed zero-copy views (or converted copies).
// Format: 8-byte little-endian header length H, H bytes of JSON, then the data buffer.
// POSIX (mmap). Requires a little-endian host, as the format does.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/detail/half.hpp"
#include "moe/core/types.hpp"

namespace moe {

enum class Dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

namespace detail {
struct DtypeName {
  const char* name;
  Dtype dtype;
  std::size_t bytes;
};
inline constexpr DtypeName kDtypes[] = {
    {"BOOL", Dtype::BOOL, 1},       {"U8", Dtype::U8, 1},           {"I8", Dtype::I8, 1},
    {"F8_E5M2", Dtype::F8_E5M2, 1}, {"F8_E4M3", Dtype::F8_E4M3, 1}, {"I16", Dtype::I16, 2},
    {"U16", Dtype::U16, 2},         {"F16", Dtype::F16, 2},         {"BF16", Dtype::BF16, 2},
    {"I32", Dtype::I32, 4},         {"U32", Dtype::U32, 4},         {"F32", Dtype::F32, 4},
    {"I64", Dtype::I64, 8},         {"U64", Dtype::U64, 8},         {"F64", Dtype::F64, 8}};

template <class T>
constexpr bool dtype_matches(Dtype d) {
  if constexpr (std::is_same_v<T, float>)
    return d == Dtype::F32;
  else if constexpr (std::is_same_v<T, double>)
    return d == Dtype::F64;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return d == Dtype::I32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return d == Dtype::I64;
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return d == Dtype::U8 || d == Dtype::BOOL;
  else
    return false;
}
}  // namespace detail

inline const char* dtype_name(Dtype d) {
  for (const auto& e : detail::kDtypes)
    if (e.dtype == d) return e.name;
  return "?";
}
inline std::size_t dtype_size(Dtype d) {
  for (const auto& e : detail::kDtypes)
    if (e.dtype == d) return e.bytes;
  return 0;
}

/// One tensor's header entry. begin/end are byte offsets into the data buffer.
struct TensorInfo {
  std::string name;
  Dtype dtype;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

class SafeTensorsFile {
 public:
  /// Largest header accepted (the reference implementation's limit).
  static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

  /// Maps and validates `path`. Throws moe::Error naming the file and the problem: unreadable,
  /// shorter than 8 bytes, header length past the end or over kMaxHeaderBytes, JSON that does not
  /// parse or is not an object, unknown dtype, malformed shape or data_offsets, byte size not
  /// matching dtype x shape, tensors out of range, overlapping, or not tiling the data buffer.
  explicit SafeTensorsFile(const std::string& path) : path_(path) {
    std::uint16_t probe = 1;
    unsigned char low;
    std::memcpy(&low, &probe, 1);
    MOE_CHECK(low == 1, "safetensors: big-endian hosts are not supported");
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MOE_CHECK(fd >= 0, "safetensors: cannot open '" << path << "': " << std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      MOE_CHECK(false, "safetensors: '" << path << "' is not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      ::close(fd);
      MOE_CHECK(p != MAP_FAILED, "safetensors: cannot map '" << path << "': " << std::strerror(errno));
      base_ = static_cast<const unsigned char*>(p);
    } else {
      ::close(fd);
    }
    try {
      parse();
    } catch (...) {
      unmap();
      throw;
    }
  }
  ~SafeTensorsFile() { unmap(); }
  SafeTensorsFile(SafeTensorsFile&& o) noexcept { *this = std::move(o); }
  SafeTensorsFile& operator=(SafeTensorsFile&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      base_ = std::exchange(o.base_, nullptr);
      size_ = std::exchange(o.size_, 0);
      data_ = std::exchange(o.data_, nullptr);
      tensors_ = std::move(o.tensors_);
      metadata_ = std::move(o.metadata_);
    }
    return *this;
  }
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : tensors_) out.push_back(kv.first);
    return out;
  }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// Throws moe::Error "tensor 'name' not found" (with the file) when absent.
  const TensorInfo& info(const std::string& name) const {
    const auto it = tensors_.find(name);
    MOE_CHECK(it != tensors_.end(), "safetensors: tensor '" << name << "' not found in '" << path_ << "'");
    return it->second;
  }
  /// Raw bytes of a tensor (end - begin of them), inside the mapping.
  const unsigned char* bytes(const std::string& name) const { return data_ + info(name).begin; }

  /// Zero-copy view of a tensor whose dtype is exactly T (F32 ↔ float, F64 ↔ double, I32, I64,
  /// U8/BOOL), flattened. Throws on a dtype mismatch or a misaligned offset.
  template <class T>
  Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> vector(const std::string& name) const {
    const TensorInfo& t = info(name);
    return {typed<T>(t), static_cast<Index>(t.numel())};
  }
  /// Zero-copy row-major rows x cols view of a 2-D tensor [rows, cols] whose dtype is exactly T.
  /// A Hugging Face linear weight [out, in] viewed this way is W^T; see hf_llama.hpp for the
  /// math-orientation (column-major) view of the same bytes.
  template <class T>
  Eigen::Map<const RowMatrix<T>> matrix(const std::string& name) const {
    const TensorInfo& t = info(name);
    MOE_CHECK(t.shape.size() == 2,
              "safetensors: tensor '" << name << "' has " << t.shape.size() << " dimensions, expected 2");
    return {typed<T>(t), static_cast<Index>(t.shape[0]), static_cast<Index>(t.shape[1])};
  }

  /// A copy converted to float, flattened: F32, F64, F16 and BF16 tensors (copies work whatever
  /// the alignment).
  std::vector<float> to_float(const std::string& name) const {
    const TensorInfo& t = info(name);
    const unsigned char* p = data_ + t.begin;
    std::vector<float> out(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < out.size(); ++i) {
      switch (t.dtype) {
        case Dtype::F32:
          std::memcpy(&out[i], p + 4 * i, 4);
          break;
        case Dtype::F64: {
          double v;
          std::memcpy(&v, p + 8 * i, 8);
          out[i] = static_cast<float>(v);
          break;
        }
        case Dtype::F16:
          out[i] = detail::f16_to_float(load_u16(p + 2 * i));
          break;
        case Dtype::BF16:
          out[i] = detail::bf16_to_float(load_u16(p + 2 * i));
          break;
        default:
          MOE_CHECK(false, "safetensors: tensor '" << name << "' has dtype " << dtype_name(t.dtype)
                                                   << "; only F32, F64, F16 and BF16 convert to float");
      }
    }
    return out;
  }

 private:
  static std::uint16_t load_u16(const unsigned char* p) {
    std::uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }

  template <class T>
  const T* typed(const TensorInfo& t) const {
    MOE_CHECK(detail::dtype_matches<T>(t.dtype), "safetensors: tensor '" << t.name << "' is "
                                                                         << dtype_name(t.dtype)
                                                                         << ", not the requested type; "
                                                                         << "use to_float() to convert");
    const unsigned char* p = data_ + t.begin;
    MOE_CHECK(reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0,
              "safetensors: tensor '" << t.name << "' starts at a byte offset not aligned for "
                                      << dtype_name(t.dtype) << "; use to_float() to copy it");
    return reinterpret_cast<const T*>(p);
  }

  void unmap() {
    if (base_) ::munmap(const_cast<unsigned char*>(base_), size_);
    base_ = nullptr;
  }

  void parse() {
    const std::string& f = path_;
    MOE_CHECK(size_ >= 8,
              "safetensors: '" << f << "' is " << size_ << " bytes, too short for the 8-byte header length");
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base_[i];
    MOE_CHECK(header_len <= kMaxHeaderBytes, "safetensors: '" << f << "' declares a " << header_len
                                                              << "-byte header, over the " << kMaxHeaderBytes
                                                              << "-byte limit");
    MOE_CHECK(header_len <= size_ - 8, "safetensors: '" << f << "' declares a " << header_len
                                                        << "-byte header but only " << size_ - 8
                                                        << " bytes follow the length (truncated file?)");
    data_ = base_ + 8 + header_len;
    const std::size_t data_size = size_ - 8 - static_cast<std::size_t>(header_len);
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(base_ + 8, base_ + 8 + header_len);
    } catch (const nlohmann::json::exception& e) {
      MOE_CHECK(false, "safetensors: '" << f << "' header is not valid JSON: " << e.what());
    }
    MOE_CHECK(header.is_object(), "safetensors: '" << f << "' header is not a JSON object");
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        MOE_CHECK(entry.is_object(), "safetensors: '" << f << "' __metadata__ is not an object");
        for (const auto& [key, value] : entry.items()) {
          MOE_CHECK(value.is_string(), "safetensors: '" << f << "' metadata '" << key << "' is not a string");
          metadata_[key] = value.get<std::string>();
        }
        continue;
      }
      tensors_.emplace(name, parse_entry(name, entry));
    }
    // Sorted by offset, the tensors must tile [0, data_size) exactly: no overlap, no hole, nothing
    // past the end (the format's rule; a violation means a corrupt or truncated file).
    std::vector<const TensorInfo*> order;
    for (const auto& kv : tensors_) order.push_back(&kv.second);
    std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::size_t expected = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo* t : order) {
      MOE_CHECK(t->end <= data_size, "safetensors: '" << f << "' tensor '" << t->name << "' ends at byte "
                                                      << t->end << " of a " << data_size
                                                      << "-byte data buffer (truncated file?)");
      MOE_CHECK(t->begin >= expected,
                "safetensors: '" << f << "' tensors '" << prev->name << "' and '" << t->name << "' overlap");
      MOE_CHECK(t->begin == expected, "safetensors: '" << f << "' has " << t->begin - expected
                                                       << " unused bytes before tensor '" << t->name << "'");
      expected = t->end;
      prev = t;
    }
    MOE_CHECK(expected == data_size, "safetensors: '" << f << "' has " << data_size - expected
                                                      << " bytes after the last tensor's data");
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const {
    const std::string& f = path_;
    const std::string where = "safetensors: '" + f + "' tensor '" + name + "'";
    MOE_CHECK(entry.is_object(), where << " entry is not an object");
    TensorInfo t;
    t.name = name;
    const auto dt = entry.find("dtype");
    MOE_CHECK(dt != entry.end() && dt->is_string(), where << " has no string 'dtype'");
    const auto* known = std::find_if(std::begin(detail::kDtypes), std::end(detail::kDtypes),
                                     [&](const detail::DtypeName& d) { return *dt == d.name; });
    MOE_CHECK(known != std::end(detail::kDtypes), where << " has unknown dtype " << dt->dump());
    t.dtype = known->dtype;
    const auto sh = entry.find("shape");
    MOE_CHECK(sh != entry.end() && sh->is_array(), where << " has no 'shape' array");
    // Byte size with overflow checks: every dimension and the running product stay below 2^62.
    std::uint64_t bytes = known->bytes;
    for (const auto& dim : *sh) {
      MOE_CHECK(dim.is_number_integer() && dim.get<std::int64_t>() >= 0,
                where << " has a shape entry " << dim.dump() << " that is not a non-negative integer");
      const auto v = static_cast<std::uint64_t>(dim.get<std::int64_t>());
      MOE_CHECK(v == 0 || bytes <= (std::uint64_t{1} << 62) / v, where << " shape is too large");
      bytes *= v;
      t.shape.push_back(static_cast<std::int64_t>(v));
    }
    const auto off = entry.find("data_offsets");
    MOE_CHECK(off != entry.end() && off->is_array() && off->size() == 2 && (*off)[0].is_number_unsigned() &&
                  (*off)[1].is_number_unsigned(),
              where << " has no 'data_offsets' pair of non-negative integers");
    const auto begin = (*off)[0].get<std::uint64_t>(), end = (*off)[1].get<std::uint64_t>();
    MOE_CHECK(begin <= end, where << " has data_offsets [" << begin << ", " << end << "] with begin > end");
    MOE_CHECK(end - begin == bytes, where << " holds " << end - begin << " bytes but dtype " << known->name
                                          << " x shape needs " << bytes);
    t.begin = static_cast<std::size_t>(begin);
    t.end = static_cast<std::size_t>(end);
    return t;
  }

  std::string path_;
  const unsigned char* base_ = nullptr;
  std::size_t size_ = 0;
  const unsigned char* data_ = nullptr;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moe
