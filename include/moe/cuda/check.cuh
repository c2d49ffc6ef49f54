// moe — CUDA error checks and an owning device buffer, for the optional CUDA path.
//
// Compiled only by nvcc (MOE_ENABLE_CUDA=ON). Every runtime call is checked and a failure becomes
// a moe::Error naming the call and CUDA's message; kernels launched here are checked with
// cudaGetLastError right after the launch (errors inside a kernel surface at the next
// synchronising call, which checks them the same way).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "moe/config.hpp"

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

/// kernel<<<grid, block, shared_bytes, stream>>>(args...), then the launch's check
/// (cudaGetLastError): a configuration the GPU refuses throws here, not at the next
/// synchronisation. shared_bytes: the kernel's dynamic shared memory (over 48 KB only after
/// cudaFuncSetAttribute raised the kernel's limit). (Built against the CPU emulator of
/// tests/cuda/emulator, which defines MOE_CUDA_EMULATION, the kernel runs there.)
template <class... Params, class... Args>
void launch_with_shared(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
                        cudaStream_t stream, Args&&... args) {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
  // (clang-format splits this launch's closing >>> inside a function template)
  // clang-format off
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
  MOE_CUDA_CHECK(cudaGetLastError());
}

/// launch_with_shared with programmatic dependent launch (compute capability 9.0 and later): the
/// kernel may be scheduled while the kernel before it on the stream still runs, once every block
/// of that one has reached wait_for_previous_kernel (below) or exited, so its launch latency hides
/// behind the other's tail. The kernel must call wait_for_previous_kernel before it reads what an
/// earlier kernel wrote. Inside a CUDA graph the launch is captured with the same edge. (The
/// emulator runs kernels one after another, which this allows too, and checks that every thread
/// of the kernel called wait_for_previous_kernel.)
template <class... Params, class... Args>
void launch_overlapping(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
                        cudaStream_t stream, Args&&... args) {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::launch_overlapping(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
  cudaLaunchAttribute overlap{};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &overlap;
  config.numAttrs = 1;
  MOE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
#endif
  MOE_CUDA_CHECK(cudaGetLastError());
}

/// The first statement of every kernel of a forward: lets the next kernel on the stream be
/// scheduled (launch_overlapping; its blocks then wait here in turn), then waits until the kernels
/// before this one have finished and their writes are visible. Both are no-ops for a kernel
/// launched without the overlap, and before compute capability 9.0.
__device__ inline void wait_for_previous_kernel() {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::wait_for_previous_kernel();  // checked there: an overlapping kernel must call it
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/// kernel<<<grid, block, 0, stream>>>(args...), checked as launch_with_shared.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  launch_with_shared(kernel, grid, block, 0, stream, std::forward<Args>(args)...);
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
