// moe — kernel launches and the kernels' wait on the previous kernel: the CUDA runtime's launch on
// a GPU, the CPU emulator's (tests/cuda/emulator, which defines MOE_CUDA_EMULATION) in its build.
// Every launch is checked with cudaGetLastError right after it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "moe/cuda/check.cuh"

namespace moe::cuda {

/// kernel<<<grid, block, shared_bytes, stream>>>(args...), then the launch's check
/// (cudaGetLastError): a configuration the GPU refuses throws here, not at the next
/// synchronisation. shared_bytes: the kernel's dynamic shared memory (over 48 KB only after
/// cudaFuncSetAttribute raised the kernel's limit).
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

}  // namespace moe::cuda
