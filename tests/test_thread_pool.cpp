#include <atomic>
#include <catch2/catch.hpp>
#include <moe/thread_pool.hpp>
#include <stdexcept>
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
