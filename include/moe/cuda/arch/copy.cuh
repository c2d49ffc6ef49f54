// moe — 16-byte moves of the tensor-core tiles: a vector store, the asynchronous global-to-shared
// copies of the pipelined tiles (cp.async, sm_80 and later: a copy runs while the thread goes on,
// and a thread waits for its own earlier groups of copies), and the block's dynamic shared memory.
//
// In the CPU emulator (MOE_CUDA_EMULATION) a copy lands at the wait that covers it (the latest a
// GPU may land it) under its forward schedule, and when issued (the earliest) under its reverse
// one (emulator.hpp), and the 16-byte alignment a GPU needs is checked: so a stage read before its
// wait, a wait that counts the groups wrong, and a copy into a stage another warp still reads each
// change a result.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace moe::cuda::kernels {

/// The 16 bytes v to dst (16-byte aligned): one vector store, as CUDA code writes it; in the CPU
/// emulator, where the cast would break C++'s aliasing rules, a memcpy that first checks the
/// alignment a GPU needs.
__device__ inline void store16(void* dst, const uint4& v) {
#if defined(MOE_CUDA_EMULATION)
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0) __trap();
  memcpy(dst, &v, sizeof v);
#else
  *static_cast<uint4*>(dst) = v;
#endif
}

/// Starts copying the 16 bytes at src (global memory) to dst (shared memory), both 16-byte
/// aligned; with full false it writes 16 zero bytes to dst and reads nothing (cp.async's src-size
/// 0), so src need only be some valid address. Cached in L2 only (.cg): a tile's operands are read
/// once per block.
__device__ inline void copy16_async(void* dst, const void* src, bool full) {
#if defined(MOE_CUDA_EMULATION)
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0 || reinterpret_cast<std::uintptr_t>(src) % 16 != 0)
    __trap();
  moe_emulation::async_copy16(dst, src, full);
#else
  const auto shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src), "r"(full ? 16 : 0)
               : "memory");
#endif
}

/// Closes the calling thread's group of copies started since the last commit (possibly none: an
/// empty group keeps every thread's count of groups the same).
__device__ inline void commit_copies() {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

/// Waits until at most kPending of the calling thread's committed groups are still in flight (the
/// newest ones): every older group's copies have landed in shared memory. Other threads' copies
/// are visible only after a barrier that follows their own wait.
template <int kPending>
__device__ inline void wait_copies() {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::async_wait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

/// The block's dynamic shared memory (the launch's shared-bytes argument), 128-byte aligned.
__device__ inline unsigned char* dynamic_shared() {
#if defined(MOE_CUDA_EMULATION)
  return moe_emulation::dynamic_shared();
#else
  extern __shared__ __align__(128) unsigned char moe_dynamic_shared[];
  return moe_dynamic_shared;
#endif
}

/// Two values to dst (4 bytes apart or 2, as T is float or 16-bit), aligned to their pair: one
/// store; in the emulator a memcpy after the alignment check.
template <class T>
__device__ inline void store_pair(T* dst, T v0, T v1) {
  const T pair[2] = {v0, v1};
#if defined(MOE_CUDA_EMULATION)
  if (reinterpret_cast<std::uintptr_t>(dst) % sizeof pair != 0) __trap();
  memcpy(dst, pair, sizeof pair);
#else
  if constexpr (sizeof pair == 8) {
    float2 packed;
    memcpy(&packed, pair, sizeof packed);
    *reinterpret_cast<float2*>(dst) = packed;
  } else {
    unsigned packed;
    memcpy(&packed, pair, sizeof packed);
    *reinterpret_cast<unsigned*>(dst) = packed;
  }
#endif
}
}  // namespace moe::cuda::kernels
