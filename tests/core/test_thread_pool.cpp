#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <moe/core/thread_pool.hpp>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace moe;

TEST_CASE("ThreadPool runs every task exactly once, repeatedly", "[thread_pool]") {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    CHECK(pool.size() == threads);
    for (int round = 0; round < 50; ++round) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(37 + round));
      pool.parallel_for(static_cast<Index>(hits.size()),
                        [&](Index i) { ++hits[static_cast<std::size_t>(i)]; });
      for (auto& h : hits) CHECK(h.load() == 1);
    }
  }
}

TEST_CASE("ThreadPool rethrows a task's exception and stays usable", "[thread_pool]") {
  ThreadPool pool(2);
  CHECK_THROWS_WITH(pool.parallel_for(100,
                                      [](Index i) {
                                        if (i == 42) throw std::runtime_error("task 42 failed");
                                      }),
                    "task 42 failed");
  std::atomic<int> n{0};
  pool.parallel_for(10, [&](Index) { ++n; });
  CHECK(n == 10);
  ThreadPool automatic(0);
  CHECK(automatic.size() >= 1);
}

TEST_CASE("ThreadPool runs nested and concurrent loops inline instead of deadlocking", "[thread_pool]") {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> hits(64);
  pool.parallel_for(8, [&](Index i) {
    pool.parallel_for(8, [&](Index j) { ++hits[static_cast<std::size_t>(i * 8 + j)]; });  // nested
  });
  for (auto& h : hits) CHECK(h.load() == 1);
  // Two threads share one pool: whichever finds it busy runs its loop itself.
  std::vector<std::atomic<int>> a(1000), b(1000);
  std::thread other([&] {
    for (int r = 0; r < 20; ++r) pool.parallel_for(1000, [&](Index i) { ++a[static_cast<std::size_t>(i)]; });
  });
  for (int r = 0; r < 20; ++r) pool.parallel_for(1000, [&](Index i) { ++b[static_cast<std::size_t>(i)]; });
  other.join();
  for (std::size_t i = 0; i < 1000; ++i) {
    REQUIRE(a[i].load() == 20);
    REQUIRE(b[i].load() == 20);
  }
}

TEST_CASE("ThreadPool runs every task after its threads went back to sleep", "[thread_pool]") {
  // Back to back, the workers are still polling for the next loop (MOE_POOL_SPIN_US); after a
  // pause longer than that they sleep on the condition variable and must be woken. Both ways, every
  // task runs once.
  ThreadPool pool(3);
  for (int round = 0; round < 6; ++round) {
    if (round % 2 == 1) std::this_thread::sleep_for(std::chrono::microseconds(3 * MOE_POOL_SPIN_US + 1000));
    std::vector<std::atomic<int>> hits(100);
    pool.parallel_for(100, [&](Index i) { ++hits[static_cast<std::size_t>(i)]; });
    for (auto& h : hits) REQUIRE(h.load() == 1);
  }
}
