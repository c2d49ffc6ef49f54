// moe — a small persistent thread pool owned by the caller (no global state).
//
// Determinism contract: the library splits work into tasks whose boundaries never depend on the
// number of threads, and each task writes its own outputs, so any pool size gives bitwise the
// same result. The pool only decides who runs a task, never what a task computes.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/types.hpp"

namespace moe {

class ThreadPool {
 public:
  /// num_threads counts the calling thread: ThreadPool(1) runs everything inline.
  /// 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0) {
    if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
    num_threads = std::max(num_threads, 1);
    workers_.reserve(static_cast<std::size_t>(num_threads - 1));
    for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  /// Runs fn(i) for every i in [0, n) and returns when all have run. The first exception thrown
  /// by a task is rethrown here (tasks not yet started are skipped). While the pool is busy — a
  /// task calling parallel_for again, or a second thread sharing the pool — the new loop runs
  /// inline on its caller: never a deadlock, and (tasks being thread-independent) the same
  /// results. Allocates nothing.
  template <class F>
  void parallel_for(Index n, F&& fn) {
    if (n <= 0) return;
    if (workers_.empty() || n == 1 || in_use_.exchange(true)) {
      for (Index i = 0; i < n; ++i) fn(i);
      return;
    }
    struct Release {
      std::atomic<bool>& flag;
      ~Release() { flag.store(false); }
    } release{in_use_};
    using Fn = std::remove_reference_t<F>;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ctx_ = const_cast<void*>(static_cast<const void*>(&fn));
      job_call_ = [](void* ctx, Index i) { (*static_cast<Fn*>(ctx))(i); };
      job_size_ = n;
      next_.store(0);
      error_ = nullptr;
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    run_tasks();
    spin_until([this] { return busy_.load() == 0; });
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
    job_ctx_ = nullptr;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  void run_tasks() {
    for (;;) {
      const Index i = next_.fetch_add(1);
      if (i >= job_size_) return;
      try {
        job_call_(job_ctx_, i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(job_size_);  // skip the tasks nobody has started
      }
    }
  }

  /// Polls done() for up to kSpin, before a thread blocks on a condition variable: the worker
  /// waiting for the next loop, the caller for the workers to finish this one. A forward runs
  /// several loops microseconds apart, and a thread that slept takes tens of microseconds to wake,
  /// one that polled about one (bench/RESULTS.md, "thread pool"). kSpin bounds what an idle pool
  /// burns.
  template <class Done>
  static void spin_until(Done done) {
    if constexpr (kSpin.count() == 0) return;
    const auto end = std::chrono::steady_clock::now() + kSpin;
    for (unsigned i = 1; !done(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();  // lets the sibling hyperthread run, and saves power while polling
#endif
      if (i % 64 == 0 && std::chrono::steady_clock::now() > end) return;
    }
  }
  static constexpr std::chrono::microseconds kSpin{MOE_POOL_SPIN_US};

  void worker_loop() {
    unsigned long seen = 0;
    for (;;) {
      spin_until([&] { return generation_.load() != seen || stop_.load(); });
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      run_tasks();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --busy_;
      }
      done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  // Atomic so spin_until can poll them; written under mutex_, so the condition variables' waits
  // see every change too.
  std::atomic<bool> stop_{false};
  std::atomic<unsigned long> generation_{0};
  std::atomic<int> busy_{0};
  void* job_ctx_ = nullptr;
  void (*job_call_)(void*, Index) = nullptr;
  Index job_size_ = 0;
  std::atomic<Index> next_{0};
  std::atomic<bool> in_use_{false};
  std::exception_ptr error_;
};

/// Runs fn(i) for i in [0, n) on `pool`, or inline on the calling thread when pool is null.
template <class F>
void parallel_for(ThreadPool* pool, Index n, F&& fn) {
  if (pool) {
    pool->parallel_for(n, fn);
  } else {
    for (Index i = 0; i < n; ++i) fn(i);
  }
}

}  // namespace moe
