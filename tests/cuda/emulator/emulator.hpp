// A CPU emulator of the slice of CUDA that moe's kernels use, so the CUDA path's tests run on
// machines without a GPU (CI, this project's development machines): every CUDA thread of a block
// is a fiber, and the block's fibers run one at a time on the calling thread until each reaches a
// barrier (__syncthreads, or a warp-wide intrinsic), so shared memory, barriers and warp
// collectives behave as on a GPU, deterministically. "Device" memory is host heap memory, so
// AddressSanitizer checks every kernel access; a fresh allocation holds 0xff bytes, not zeros.
//
// What it proves: the kernels' indexing, synchronisation and numerics, the host code's launch
// configurations, and that a forward allocates nothing and copies nothing synchronously while a
// stream is captured. A missing __syncthreads, or one block reading another's output, makes a
// kernel's result depend on the order the threads run in: running the same work under the
// reverse schedule (set_schedule) and comparing the bits exposes it where it changes a result.
// What it cannot: timing, the memory model of a real GPU beyond those two orders (fibers switch
// only at barriers, so two threads never interleave between them), and the tensor cores' exact
// accumulation order (mma_sync sums in k order, in float).
//
// Test code only: the shims in include/ (cuda_runtime.h, cuda_bf16.h, cuda_fp16.h, mma.h) stand
// in for the toolkit's headers and define MOE_CUDA_EMULATION, which moe::cuda::launch (check.cuh)
// uses instead of <<<...>>>. x86-64 Linux only (the fiber switch is eight instructions of
// assembly).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// The built-in variables, set by the emulator before it resumes each fiber.
inline uint3 threadIdx{}, blockIdx{};
inline dim3 blockDim, gridDim;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorStreamCaptureUnsupported = 900,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
struct CUstream_st;
struct CUgraph_st;
struct CUgraphExec_st;
struct CUevent_st;
using cudaStream_t = CUstream_st*;
using cudaGraph_t = CUgraph_st*;
using cudaGraphExec_t = CUgraphExec_st*;
using cudaEvent_t = CUevent_st*;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaDeviceProp {
  char name[256];
  int major, minor;  // compute capability: the emulator reports 9.0 (it runs the sm_90a kernels)
  int multiProcessorCount;
  int l2CacheSize;
};

// The runtime API calls moe and its tests make (emulator.cpp).
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaMalloc(void** p, std::size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dpitch, const void* src, std::size_t spitch,
                              std::size_t width, std::size_t height, cudaMemcpyKind kind,
                              cudaStream_t stream = nullptr);
cudaError_t cudaMemsetAsync(void* p, int value, std::size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);

namespace moe_emulation {
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
}
/// Only the dynamic shared memory limit (up to 227 KB, as on sm_90); launches above 48 KB are
/// refused unless it was raised for that kernel, as a GPU refuses them.
template <class T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return moe_emulation::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}

namespace moe_emulation {

/// Runs `op` now, or records it when `stream` is being captured into a graph.
void enqueue(cudaStream_t stream, std::function<void()> op);
/// Checks a launch configuration (sets the last error and returns false if the GPU would refuse it):
/// the grid and block sizes, and shared_bytes of dynamic shared memory for `kernel`.
bool valid_launch(dim3 grid, dim3 block, std::size_t shared_bytes, const void* kernel);
/// Runs body once per thread of every block of the grid (one block at a time, its threads as
/// fibers), each block with shared_bytes of dynamic shared memory that hold 0xff bytes at its start.
void run_grid(dim3 grid, dim3 block, std::size_t shared_bytes, const std::function<void()>& body);
/// The running block's dynamic shared memory (128-byte aligned).
unsigned char* dynamic_shared();
/// cp.async for the calling thread (copy.cuh): a 16-byte copy (16 zeros when !full), closing the
/// thread's group of copies, and waiting until at most `pending` of its groups are in flight. A
/// copy lands at the wait that covers it under Schedule::kForward and when issued under kReverse;
/// a thread that exits with copies in flight stops the program.
void async_copy16(void* dst, const void* src, bool full);
void async_commit();
void async_wait(int pending);
/// The byte offset of p in the running block's dynamic shared memory (the emulator's shared
/// window: __cvta_generic_to_shared); stops the program if p is not in it.
unsigned shared_address(const void* p);
/// wgmma.mma_async m64nNk16 with f32 accumulators and both operands in shared memory, K-major,
/// without swizzling (expert_mma_wgmma.cuh), for the calling thread of its warpgroup: d holds the
/// thread's n / 2 accumulators in the instruction's layout (thread t: rows 16·(t / 32 % 4) +
/// t % 32 / 4 (+ 8), columns 8·(i / 4) + 2·(t % 4) + i % 2). Each element adds its 16 products in
/// k order, in float. The operands are read, and d written, when the wait that covers the
/// instruction's group runs under Schedule::kForward (the latest a GPU may), when issued under
/// kReverse (the earliest). The descriptors are checked: no swizzle, base offset 0, every core
/// matrix inside the dynamic shared memory. A thread that exits with products in flight stops
/// the program.
void wgmma_async(float* d, int n, std::uint64_t desc_a, std::uint64_t desc_b, bool bf16);
void wgmma_commit();
void wgmma_wait(int pending);
/// The order the emulator runs a grid's blocks and a block's threads in. Fibers switch only at
/// barriers (the block's, or a warp's intrinsics), so in one barrier interval the first thread to
/// run sees none of the others' writes of that interval and the last sees all of them.
/// - kForward: blocks in order; each thread in order runs to its next barrier, then the next
///   thread, so the warps of a block advance together.
/// - kReverse: blocks last to first; the warps last to first, each run until all its lanes wait at
///   the block barrier (a warp as far ahead of the others as __syncthreads lets it get), its lanes
///   last to first.
/// A race (a read of what another thread writes in the same interval, a shared buffer rewritten
/// while another warp still reads it, a block reading another block's output) then gives
/// different bits under the two schedules.
enum class Schedule { kForward, kReverse };
void set_schedule(Schedule s);
/// Waits until every live thread of the block, or every lane of the warp, has arrived.
void sync_block();
void sync_warp();
/// Aborts the program, naming the block and thread (a kernel's __trap, or a check of the emulator).
[[noreturn]] void trap(const char* what);
/// check.cuh's wait_for_previous_kernel for the calling thread, and whether it has called it since
/// its kernel started.
void wait_for_previous_kernel();
bool waited_for_previous_kernel();
/// The calling lane's warp's exchange area: 32 words for shuffles, ballots and matches, three 16 x 16 float
/// tiles for mma_sync.
struct WarpScratch {
  std::uint64_t word[32];
  float a[256], b[256], c[256];
};
WarpScratch& warp_scratch();

/// The exchange behind the warp's shuffles, ballots and matches: each lane publishes one word (a
/// value of at most 8 bytes, zero-extended) and receives all 32, in lane order.
template <class T>
std::array<std::uint64_t, 32> exchange_words(T mine) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "warp exchanges carry at most 8 bytes a lane");
  WarpScratch& w = warp_scratch();
  std::uint64_t word = 0;
  std::memcpy(&word, &mine, sizeof mine);
  w.word[threadIdx.x % 32] = word;
  sync_warp();
  std::array<std::uint64_t, 32> all;
  std::copy(std::begin(w.word), std::end(w.word), all.begin());
  sync_warp();  // no lane rewrites its word before every lane has read them all
  return all;
}

/// kernel<<<grid, block, shared_bytes, stream>>>(args...): the arguments are copied, as a launch
/// copies them.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
            Args&&... args) {
  if (!valid_launch(grid, block, shared_bytes, reinterpret_cast<const void*>(kernel))) return;
  std::function<void()> body = [kernel, params = std::make_tuple(static_cast<Params>(args)...)] {
    std::apply(kernel, params);
  };
  enqueue(stream, [grid, block, shared_bytes, body] { run_grid(grid, block, shared_bytes, body); });
}

/// check.cuh's launch_overlapping (programmatic dependent launch): runs the kernel as launch does,
/// since one after another is an order a GPU may run them in too, and stops the program if a thread
/// of it returns without having called wait_for_previous_kernel, without which it could read an
/// earlier kernel's output before that kernel has written it. (Where in the kernel the call is
/// cannot be checked here: it is the kernel's first statement.)
template <class... Params, class... Args>
void launch_overlapping(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
                        cudaStream_t stream, Args&&... args) {
  if (!valid_launch(grid, block, shared_bytes, reinterpret_cast<const void*>(kernel))) return;
  std::function<void()> body = [kernel, params = std::make_tuple(static_cast<Params>(args)...)] {
    std::apply(kernel, params);
    if (!waited_for_previous_kernel())
      trap("a kernel launched to overlap the previous one returned without wait_for_previous_kernel()");
  };
  enqueue(stream, [grid, block, shared_bytes, body] { run_grid(grid, block, shared_bytes, body); });
}

}  // namespace moe_emulation

// Device qualifiers and intrinsics. Shared memory: a function-local static, which every thread of
// the block sees (blocks run one after another).
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

inline void __syncthreads() { moe_emulation::sync_block(); }
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { moe_emulation::sync_warp(); }

template <class T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
  const auto all = moe_emulation::exchange_words(v);
  T r;
  std::memcpy(&r, &all[(threadIdx.x ^ static_cast<unsigned>(lane_mask)) % 32], sizeof r);
  return r;
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto all = moe_emulation::exchange_words(predicate ? 1 : 0);
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (all[l]) bits |= 1u << l;
  return bits & mask;
}

/// The lanes of the warp whose value equals the caller's (sm_70+).
template <class T>
unsigned __match_any_sync(unsigned mask, T v) {
  const auto all = moe_emulation::exchange_words(v);
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (all[l] == all[threadIdx.x % 32]) bits |= 1u << l;
  return bits & mask;
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline void __trap() { moe_emulation::trap("__trap() in a kernel"); }
/// A read-only load; checks the alignment the GPU needs (a vector type's: 16 bytes for float4).
template <class T>
T __ldg(const T* p) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
    moe_emulation::trap("__ldg of a misaligned address");
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline unsigned atomicMin(unsigned* p, unsigned v) {  // one OS thread runs every fiber
  const unsigned old = *p;
  if (v < old) *p = v;
  return old;
}
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p = old + v;
  return old;
}
