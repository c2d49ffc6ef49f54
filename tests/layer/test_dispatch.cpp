#include <catch2/catch.hpp>
#include <moe/layer/dispatch.hpp>

using namespace moe;

TEST_CASE("build_dispatch is a stable counting sort by expert", "[dispatch]") {
  IdMatrix ids(4, 2);
  ids << 2, 0,  //
      0, 2,     //
      3, 0,     //
      2, 3;
  ExpertDispatch dp;
  build_dispatch(ids, 5, dp);
  CHECK(dp.counts == std::vector<Index>{3, 0, 3, 2, 0});  // experts 1 and 4 get nothing
  CHECK(dp.offsets == std::vector<Index>{0, 3, 3, 6, 8, 8});
  // Expert 0: pairs (0,1) (1,0) (2,1); expert 2: (0,0) (1,1) (3,0); expert 3: (2,0) (3,1).
  CHECK(dp.token == std::vector<Index>{0, 1, 2, 0, 1, 3, 2, 3});
  for (Index t = 0; t < 4; ++t)
    for (Index s = 0; s < 2; ++s) {
      const Index r = dp.row_of[static_cast<std::size_t>(t * 2 + s)];
      CHECK(dp.token[static_cast<std::size_t>(r)] == t);
      CHECK(r >= dp.offsets[static_cast<std::size_t>(ids(t, s))]);
      CHECK(r < dp.offsets[static_cast<std::size_t>(ids(t, s)) + 1]);
    }
  ids(3, 1) = 5;
  CHECK_THROWS_WITH(build_dispatch(ids, 5, dp), Catch::Contains("token 3 slot 1 names expert 5"));
  CHECK_THROWS_AS(build_dispatch(ids, 0, dp), Error);
}
