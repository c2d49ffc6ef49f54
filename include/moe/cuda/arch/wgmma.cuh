// moe — Hopper's warpgroup tensor-core instructions (wgmma, sm_90a) as the wgmma tiles use them
// (kernels/expert_mma_wgmma.cuh): the m64n128k16 product from shared memory descriptors, its
// fences, groups and waits. In the CPU emulator's build (MOE_CUDA_EMULATION) each calls the
// emulator, which runs a product at the wait that covers it (emulator.hpp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

// 1 where this compilation pass has the wgmma instructions: nvcc's sm_90a pass (the "a" target:
// CMAKE_CUDA_ARCHITECTURES 90a-real), and the CPU emulator. Elsewhere the wgmma kernels compile
// to a trap, and wgmma_compiled reports 0.
#if defined(MOE_CUDA_EMULATION) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define MOE_CUDA_WGMMA 1
#else
#define MOE_CUDA_WGMMA 0
#endif

namespace moe::cuda::kernels::wg {

#if MOE_CUDA_WGMMA
/// The shared memory address of p (a generic pointer into the block's shared memory), as the
/// matrix descriptors hold it.
__device__ inline std::uint64_t shared_address(const void* p) {
#if defined(MOE_CUDA_EMULATION)
  return moe_emulation::shared_address(p);
#else
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
#endif
}

/// Shared memory that cp.async (or a store) wrote is read next by the tensor cores through the
/// async proxy: each writing thread orders its writes before the barrier that precedes them.
__device__ inline void fence_async_proxy() {
#if !defined(MOE_CUDA_EMULATION)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/// Pins an accumulator register in program order around the asynchronous products, so that the
/// compiler neither reads it early nor moves it between issue and wait.
__device__ inline void fence_operand(float& r) {
#if !defined(MOE_CUDA_EMULATION)
  asm volatile("" : "+f"(r)::"memory");
#else
  (void)r;
#endif
}

/// d (64 rows x 128 columns over the warpgroup) += A (desc_a: 64 rows x 16 k) · B (desc_b: 128
/// columns x 16 k), issued; it has happened once wait_products covers its group.
template <class T16>
__device__ inline void product_async(float (&d)[64], std::uint64_t desc_a, std::uint64_t desc_b) {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::wgmma_async(d, 128, desc_a, desc_b, std::is_same_v<T16, __nv_bfloat16>);
#else
  // clang-format off
#define MOE_WGMMA_OPERANDS \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
  : "l"(desc_a), "l"(desc_b), "r"(1)
  // clang-format on
  // scale-d 1: d += A·B (the accumulators start at zero); scale-a, scale-b 1; trans-a, trans-b 0 (K-major).
  if constexpr (std::is_same_v<T16, __nv_bfloat16>)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, "
        "0, 0;\n}\n"
        : MOE_WGMMA_OPERANDS);
  else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, "
        "0, 0;\n}\n"
        : MOE_WGMMA_OPERANDS);
#undef MOE_WGMMA_OPERANDS
#endif
}

/// Orders the accumulators' earlier accesses before the products issued next (wgmma.fence).
__device__ inline void fence_products() {
#if !defined(MOE_CUDA_EMULATION)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

/// Closes the group of products issued since the last commit.
__device__ inline void commit_products() {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::wgmma_commit();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

/// Waits until at most kPending of the warpgroup's committed groups of products are in flight.
template <int kPending>
__device__ inline void wait_products() {
#if defined(MOE_CUDA_EMULATION)
  moe_emulation::wgmma_wait(kPending);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

#endif  // MOE_CUDA_WGMMA

}  // namespace moe::cuda::kernels::wg
