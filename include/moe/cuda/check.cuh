// moe — CUDA error checks and an owning device buffer, for the optional CUDA path.
//
// Compiled only by nvcc (MOE_ENABLE_CUDA=ON). Every runtime call is checked and a failure becomes
// a moe::Error naming the call and CUDA's message (errors inside a kernel surface at the next
// synchronising call, which checks them the same way).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "moe/core/config.hpp"

#define MOE_CUDA_CHECK(call)                                                                              \
  do {                                                                                                    \
    const cudaError_t moe_cuda_status_ = (call);                                                          \
    MOE_CHECK(moe_cuda_status_ == cudaSuccess, #call << " failed: " << cudaGetErrorName(moe_cuda_status_) \
                                                     << " (" << cudaGetErrorString(moe_cuda_status_)      \
                                                     << ")");                                             \
  } while (0)

namespace moe::cuda {

/// Number of CUDA devices; 0 when there is none or no driver (the error is cleared, not thrown:
/// callers use this to decide whether to run at all).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    return 0;
  }
  return n;
}

/// n values of T in device memory (cudaMalloc), uninitialised. Grows on reserve(), never shrinks;
/// move-only.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { reserve(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  /// At least n values (the old contents are not kept when it grows).
  void reserve(std::size_t n) {
    if (n <= n_) return;
    release();
    void* p = nullptr;
    MOE_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
    p_ = static_cast<T*>(p);
    n_ = n;
  }
  /// Copies n host values in (synchronously), growing the buffer to n if needed.
  void upload(const T* host, std::size_t n) {
    reserve(n);
    if (n) MOE_CUDA_CHECK(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }

  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  void release() noexcept {
    if (p_) static_cast<void>(cudaFree(p_));
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace moe::cuda
