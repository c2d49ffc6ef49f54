// The CUDA emulator's runtime (emulator.hpp): fibers for the threads of a block, barriers, device
// memory on the host heap, streams that run their work at once or record it into a graph.
#include "emulator.hpp"

#include "cuda_bf16.h"  // __nv_bfloat16 and __half, for the wgmma operands
#include "cuda_fp16.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)  // GCC
#define MOE_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang
#define MOE_EMU_ASAN 1
#endif
#endif
#if defined(MOE_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// moe_emu_switch(save, load): pushes the callee-saved registers, saves the stack pointer into
// *save, and resumes the context whose stack pointer is `load`. (The floating-point control words
// are not switched: kernels do not change the rounding mode.)
extern "C" void moe_emu_switch(void** save, void* load);
asm(R"(
  .text
  .globl moe_emu_switch
  .type moe_emu_switch, @function
moe_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size moe_emu_switch, .-moe_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace moe_emulation {
namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "CUDA emulator: %s (block %u,%u, thread %u)\n", what, blockIdx.x, blockIdx.y,
               threadIdx.x);
  std::abort();
}

/// Threads arrive; the last live one releases them. Exited threads no longer count (as on sm_70+).
struct Barrier {
  int expected = 0;
  int arrived = 0;
  unsigned generation = 0;
};

constexpr std::size_t kStackBytes = 256 * 1024;

/// One cp.async: 16 bytes from src to dst, or 16 zeros (full false).
struct AsyncCopy {
  void* dst;
  const void* src;
  bool full;
  void run() const {
    if (full)
      std::memcpy(dst, src, 16);
    else
      std::memset(dst, 0, 16);
  }
};

/// One wgmma.mma_async (emulator.hpp): runs when a wait covers it (kForward) or when issued.
struct Wgmma {
  float* d;
  int n;
  std::uint64_t desc_a, desc_b;
  bool bf16;
  void run() const;
};

/// A thread's asynchronous operations of one kind (cp.async copies, wgmma products) in PTX's
/// groups: issued ones join the open group, a commit closes it, and a wait runs the oldest
/// committed groups until at most `pending` remain.
template <class Op>
struct AsyncGroups {
  std::vector<Op> open;                   // issued since the last commit
  std::deque<std::vector<Op>> committed;  // oldest first

  /// Runs op now (`now`: the earliest it may happen), or leaves it for the wait that covers it.
  void issue(const Op& op, bool now) {
    if (now)
      op.run();
    else
      open.push_back(op);
  }
  void commit() {
    committed.push_back(std::move(open));
    open.clear();
  }
  void wait(int pending) {
    while (committed.size() > static_cast<std::size_t>(pending)) {
      for (const Op& op : committed.front()) op.run();
      committed.pop_front();
    }
  }
  /// Whether an operation no wait ran is left. (noinline: called from moe_emu_fiber_entry, which
  /// never returns; inlined, its temporaries would leave AddressSanitizer's redzones on the fiber's
  /// stack for the next grid.)
  [[gnu::noinline]] bool in_flight() const {
    return !open.empty() || std::any_of(committed.begin(), committed.end(),
                                        [](const std::vector<Op>& g) { return !g.empty(); });
  }
  void clear() {
    open.clear();
    committed.clear();
  }
};

struct Fiber {
  void* stack_base = nullptr;  // mmap'd, lowest page a guard
  void* sp = nullptr;
  bool done = false;
  bool waited_for_previous_kernel = false;  // wait_for_previous_kernel (check.cuh) was called
  AsyncGroups<AsyncCopy> copies;
  AsyncGroups<Wgmma> products;
#if defined(MOE_EMU_ASAN)
  void* fake_stack = nullptr;
#endif
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Barrier> warp_barriers;
  std::vector<WarpScratch> warp_scratch;
  std::vector<int> warp_live;
  Barrier barrier;
  const std::function<void()>* body = nullptr;
  void* scheduler_sp = nullptr;
  unsigned current = 0;
  unsigned long long events = 0;  // arrivals, releases and exits: progress
#if defined(MOE_EMU_ASAN)
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  std::size_t scheduler_stack_size = 0;
#endif
};

Block g_block;
Schedule g_schedule = Schedule::kForward;
cudaError_t g_last_error = cudaSuccess;

void* new_stack() {
  void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("mmap of a fiber stack failed");
  mprotect(p, static_cast<std::size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);  // overflow faults
  return p;
}

Fiber& current_fiber() { return g_block.fibers[g_block.current]; }

// Switching, with AddressSanitizer told which stack is live.
void to_scheduler(bool finished) {
  Fiber& f = current_fiber();
#if defined(MOE_EMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.fake_stack, g_block.scheduler_stack_bottom,
                                 g_block.scheduler_stack_size);
#endif
  (void)finished;
  moe_emu_switch(&f.sp, g_block.scheduler_sp);
#if defined(MOE_EMU_ASAN)
  __sanitizer_finish_switch_fiber(current_fiber().fake_stack, nullptr, nullptr);
#endif
}

extern "C" [[noreturn]] void moe_emu_fiber_entry() {
#if defined(MOE_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &g_block.scheduler_stack_bottom, &g_block.scheduler_stack_size);
#endif
  (*g_block.body)();
  Fiber& f = current_fiber();
  if (f.copies.in_flight()) fail("a thread exited with cp.async copies it never waited for");
  if (f.products.in_flight()) fail("a thread exited with wgmma products it never waited for");
  f.done = true;
  ++g_block.events;
  // An exited thread leaves the block barrier; a warp op waiting on it is a bug in the kernel.
  Barrier& b = g_block.barrier;
  if (--b.expected == b.arrived && b.arrived > 0) {
    b.arrived = 0;
    ++b.generation;
  }
  --g_block.warp_live[threadIdx.x / 32];
  to_scheduler(true);
  fail("a finished fiber was resumed");
}

void wait(Barrier& b) {
  const unsigned generation = b.generation;
  ++g_block.events;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == generation) to_scheduler(false);
}

/// A fresh stack whose first switch "returns" into moe_emu_fiber_entry (see moe_emu_switch).
void prepare(Fiber& f) {
  auto* top = reinterpret_cast<std::uint64_t*>(static_cast<char*>(f.stack_base) + kStackBytes);
  top[-1] = 0;  // entry's return address: it never returns
  top[-2] = reinterpret_cast<std::uint64_t>(&moe_emu_fiber_entry);
  for (int i = 3; i <= 8; ++i) top[-i] = 0;  // rbp, rbx, r12..r15
  f.sp = &top[-8];
  f.done = false;
  f.waited_for_previous_kernel = false;
  f.copies.clear();
  f.products.clear();
}

}  // namespace

void set_schedule(Schedule s) { g_schedule = s; }

namespace {
constexpr std::size_t kDefaultSharedLimit = 48 * 1024;  // without cudaFuncSetAttribute
constexpr int kMaxSharedOptIn = 227 * 1024;             // sm_90's per-block maximum
std::map<const void*, std::size_t> g_shared_limit;      // kernels whose limit was raised
unsigned char* g_dynamic_shared = nullptr;              // the running block's dynamic shared memory
std::size_t g_dynamic_shared_bytes = 0;
}  // namespace

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kMaxSharedOptIn) return cudaErrorInvalidValue;
  g_shared_limit[kernel] = static_cast<std::size_t>(bytes);
  return cudaSuccess;
}

unsigned char* dynamic_shared() { return g_dynamic_shared; }

void run_grid(dim3 grid, dim3 block, std::size_t shared_bytes, const std::function<void()>& body) {
  // Dynamic shared memory: a fresh heap block per grid (so AddressSanitizer sees overruns), 0xff
  // bytes at each block's start (a read of what no thread wrote shows).
  std::unique_ptr<unsigned char, decltype(&std::free)> shared(
      static_cast<unsigned char*>(std::aligned_alloc(128, (shared_bytes + 127) / 128 * 128)), &std::free);
  g_dynamic_shared = shared_bytes ? shared.get() : nullptr;
  g_dynamic_shared_bytes = shared_bytes;
  const unsigned threads = block.x, warps = (threads + 31) / 32;
  Block& b = g_block;
  while (b.fibers.size() < threads) {
    b.fibers.emplace_back();
    b.fibers.back().stack_base = new_stack();
  }
  b.warp_barriers.assign(warps, Barrier{});
  b.warp_scratch.assign(warps, WarpScratch{});
  b.body = &body;
  blockDim = block;
  gridDim = grid;
  const bool reverse = g_schedule == Schedule::kReverse;
  const unsigned long long blocks = static_cast<unsigned long long>(grid.x) * grid.y;
  for (unsigned long long n = 0; n < blocks; ++n) {
    const unsigned long long linear = reverse ? blocks - 1 - n : n;
    blockIdx = {static_cast<unsigned>(linear % grid.x), static_cast<unsigned>(linear / grid.x), 0};
    if (shared_bytes) std::memset(shared.get(), 0xff, shared_bytes);
    b.barrier = Barrier{};
    b.barrier.expected = static_cast<int>(threads);
    b.warp_live.assign(warps, 0);
    for (unsigned w = 0; w < warps; ++w) {
      b.warp_barriers[w] = Barrier{};
      b.warp_barriers[w].expected = static_cast<int>(std::min(32u, threads - 32 * w));
      b.warp_live[w] = b.warp_barriers[w].expected;
    }
    for (unsigned t = 0; t < threads; ++t) prepare(b.fibers[t]);
    unsigned live = threads;
    // kForward: every thread in turn, one step (up to its next barrier) each, so the warps advance
    // together. kReverse: the warps last to first, each run until all its lanes wait at the block
    // barrier or have exited (as far ahead of the others as a warp can get), lanes last to first.
    while (live > 0) {
      const unsigned long long before = b.events;
      for (unsigned i = 0; i < warps; ++i) {
        const unsigned w = reverse ? warps - 1 - i : i;
        const unsigned lanes = std::min(32u, threads - 32 * w);
        unsigned long long seen = 0;
        do {
          seen = b.events;
          for (unsigned j = 0; j < lanes; ++j) {
            const unsigned t = 32 * w + (reverse ? lanes - 1 - j : j);
            if (b.fibers[t].done) continue;
            b.current = t;
            threadIdx = {t, 0, 0};
#if defined(MOE_EMU_ASAN)
            __sanitizer_start_switch_fiber(&b.scheduler_fake_stack, b.fibers[t].stack_base, kStackBytes);
#endif
            moe_emu_switch(&b.scheduler_sp, b.fibers[t].sp);
#if defined(MOE_EMU_ASAN)
            __sanitizer_finish_switch_fiber(b.scheduler_fake_stack, nullptr, nullptr);
#endif
            if (b.fibers[t].done) --live;
          }
        } while (reverse && b.events != seen);
      }
      if (live > 0 && b.events == before) fail("deadlock: threads wait at a barrier others never reach");
    }
  }
}

void trap(const char* what) { fail(what); }

void wait_for_previous_kernel() { current_fiber().waited_for_previous_kernel = true; }

bool waited_for_previous_kernel() { return current_fiber().waited_for_previous_kernel; }

// cp.async. Under kForward a copy lands at the wait that covers it, the latest a GPU may land it,
// so a stage read before its wait reads the 0xff bytes of fresh shared memory or an older stage;
// under kReverse it lands when issued, the earliest, so a copy into a stage another warp still
// reads changes what that warp reads.
void async_copy16(void* dst, const void* src, bool full) {
  current_fiber().copies.issue(AsyncCopy{dst, src, full}, g_schedule == Schedule::kReverse);
}

void async_commit() { current_fiber().copies.commit(); }

void async_wait(int pending) { current_fiber().copies.wait(pending); }

unsigned shared_address(const void* p) {
  const auto* byte = static_cast<const unsigned char*>(p);
  if (!g_dynamic_shared || byte < g_dynamic_shared || byte >= g_dynamic_shared + g_dynamic_shared_bytes)
    fail("a shared-memory address of memory outside the block's dynamic shared memory");
  return static_cast<unsigned>(byte - g_dynamic_shared);
}

namespace {
/// The 16-bit value at row r, column k (k < 16) of the K-major, unswizzled operand whose shared
/// memory matrix descriptor is desc: core matrices of 8 rows x 16 bytes, the two of a row group
/// `leading` bytes apart, the row groups `stride` bytes apart (PTX ISA, wgmma's shared memory
/// matrix layout).
float operand(std::uint64_t desc, int r, int k, bool bf16) {
  if (desc >> 62 != 0) fail("wgmma: a descriptor with a swizzle mode (the kernels use none)");
  if ((desc >> 49 & 7) != 0) fail("wgmma: a descriptor with a base offset");
  const std::size_t start = (desc & 0x3fff) << 4, leading = (desc >> 16 & 0x3fff) << 4,
                    stride = (desc >> 32 & 0x3fff) << 4;
  const std::size_t at = start + static_cast<std::size_t>(r / 8) * stride +
                         static_cast<std::size_t>(k / 8) * leading + static_cast<std::size_t>(r % 8) * 16 +
                         static_cast<std::size_t>(k % 8) * 2;
  if (at + 2 > g_dynamic_shared_bytes) fail("wgmma: an operand outside the block's dynamic shared memory");
  std::uint16_t bits = 0;
  std::memcpy(&bits, g_dynamic_shared + at, sizeof bits);
  if (bf16) return __bfloat162float(__nv_bfloat16{bits});
  return __half2float(__half{bits});
}
}  // namespace

void Wgmma::run() const {
  const int t = static_cast<int>(threadIdx.x % 128), lane = t % 32;
  for (int i = 0; i < n / 2; ++i) {
    const int r = 16 * (t / 32) + lane / 4 + 8 * (i / 2 % 2), c = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
    float acc = d[i];
    for (int k = 0; k < 16; ++k)
      acc = std::fma(operand(desc_a, r, k, bf16), operand(desc_b, c, k, bf16), acc);
    d[i] = acc;
  }
}

void wgmma_async(float* d, int n, std::uint64_t desc_a, std::uint64_t desc_b, bool bf16) {
  if (blockDim.x % 128 != 0) fail("wgmma in a block that is not whole warpgroups");
  current_fiber().products.issue(Wgmma{d, n, desc_a, desc_b, bf16}, g_schedule == Schedule::kReverse);
}

void wgmma_commit() { current_fiber().products.commit(); }

void wgmma_wait(int pending) { current_fiber().products.wait(pending); }

void sync_block() { wait(g_block.barrier); }

void sync_warp() {
  const unsigned w = threadIdx.x / 32;
  Barrier& b = g_block.warp_barriers[w];
  if (g_block.warp_live[w] != b.expected) fail("a warp-wide operation with lanes that have exited");
  wait(b);
}

WarpScratch& warp_scratch() { return g_block.warp_scratch[threadIdx.x / 32]; }

// ---- the runtime: launches, memory, streams, graphs -------------------------------------------

bool valid_launch(dim3 grid, dim3 block, std::size_t shared_bytes, const void* kernel) {
  const bool ok = block.x >= 1 && block.x <= 1024 && block.y == 1 && block.z == 1 && grid.x >= 1 &&
                  grid.x <= 0x7fffffffu && grid.y >= 1 && grid.y <= 65535 && grid.z == 1;
  if (!ok) g_last_error = cudaErrorInvalidConfiguration;
  const auto raised = g_shared_limit.find(kernel);
  const std::size_t limit = raised == g_shared_limit.end() ? kDefaultSharedLimit : raised->second;
  if (ok && shared_bytes > limit) g_last_error = cudaErrorInvalidValue;
  return ok && shared_bytes <= limit;
}

namespace {

std::map<const char*, std::size_t> g_allocations;  // "device" memory: host heap blocks and their sizes
bool g_capturing = false;                          // some stream is being captured

/// Whether [p, p + bytes) lies inside one allocation.
bool find_device(const void* p, std::size_t bytes) {
  const char* c = static_cast<const char*>(p);
  auto it = g_allocations.upper_bound(c);
  if (it == g_allocations.begin()) return false;
  --it;
  return c + bytes <= it->first + it->second;
}

cudaError_t set(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}

/// Device sides of a copy must lie inside an allocation (host sides cannot be checked).
bool copy_ok(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  return (!dst_device || find_device(dst, bytes)) && (!src_device || find_device(src, bytes));
}

}  // namespace
}  // namespace moe_emulation

struct CUstream_st {
  bool capturing = false;
  std::vector<std::function<void()>> recorded;
};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point at;
};

void moe_emulation::enqueue(cudaStream_t stream, std::function<void()> op) {
  if (stream && stream->capturing)
    stream->recorded.push_back(std::move(op));
  else
    op();
}

using namespace moe_emulation;

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return std::exchange(g_last_error, cudaSuccess); }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
  }
  return "unknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer (emulator: outside every allocation)";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing (emulator: allocation, synchronous copy or "
             "synchronisation)";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  if (g_capturing) return set(cudaErrorStreamCaptureUnsupported);  // forward must not allocate
  // Exactly `bytes` (AddressSanitizer then flags any access past the end), 256-byte aligned as
  // cudaMalloc's blocks are.
  void* q = nullptr;
  if (bytes && posix_memalign(&q, 256, bytes) != 0) return set(cudaErrorMemoryAllocation);
  // A GPU's fresh allocation holds whatever was there before; here every byte is 0xff (a NaN in
  // float, bf16 and fp16, -1 as an integer), so a kernel that reads what nothing wrote computes
  // NaN or an invalid index instead of the zeros a fresh heap page would give.
  if (q) std::memset(q, 0xff, bytes);
  if (q) g_allocations[static_cast<const char*>(q)] = bytes;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  if (g_capturing) return set(cudaErrorStreamCaptureUnsupported);
  if (g_allocations.erase(static_cast<const char*>(p)) == 0) return set(cudaErrorInvalidDevicePointer);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  if (g_capturing) return set(cudaErrorStreamCaptureUnsupported);
  if (!copy_ok(dst, src, bytes, kind)) return set(cudaErrorInvalidDevicePointer);
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (!copy_ok(dst, src, bytes, kind)) return set(cudaErrorInvalidDevicePointer);
  enqueue(stream, [=] {
    if (bytes) std::memcpy(dst, src, bytes);
  });
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dpitch, const void* src, std::size_t spitch,
                              std::size_t width, std::size_t height, cudaMemcpyKind kind,
                              cudaStream_t stream) {
  if (width > dpitch || width > spitch) return set(cudaErrorInvalidValue);
  if (height == 0 || width == 0) return cudaSuccess;
  const std::size_t dst_span = dpitch * (height - 1) + width, src_span = spitch * (height - 1) + width;
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_device && !find_device(dst, dst_span)) || (src_device && !find_device(src, src_span)))
    return set(cudaErrorInvalidDevicePointer);
  enqueue(stream, [=] {
    for (std::size_t r = 0; r < height; ++r)
      std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  });
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, std::size_t bytes, cudaStream_t stream) {
  if (!find_device(p, bytes)) return set(cudaErrorInvalidDevicePointer);
  enqueue(stream, [=] { std::memset(p, value, bytes); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {  // work ran when it was queued
  if (s && s->capturing) return set(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (!s || s->capturing) return set(cudaErrorInvalidValue);
  s->capturing = g_capturing = true;
  s->recorded.clear();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  if (!s || !s->capturing) return set(cudaErrorInvalidValue);
  s->capturing = g_capturing = false;
  *graph = new CUgraph_st{std::move(s->recorded)};
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  *exec = new CUgraphExec_st{graph->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  for (const auto& op : exec->ops) enqueue(s, op);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  enqueue(s, [e] { e->at = std::chrono::steady_clock::now(); });
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return set(cudaErrorInvalidValue);
  *prop = {};
  std::snprintf(prop->name, sizeof prop->name, "moe CUDA emulator (CPU)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 1;
  return cudaSuccess;
}
