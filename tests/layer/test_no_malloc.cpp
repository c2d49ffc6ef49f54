// The hot path allocates nothing once the workspace is reserved. Two independent witnesses:
// Eigen's EIGEN_RUNTIME_NO_MALLOC (asserts inside Eigen's allocator) and a replaced global
// operator new that counts every C++ allocation (std::vector, threads' std::function, ...).
#include <atomic>

// Eigen reports a forbidden heap allocation through eigen_assert, which NDEBUG (Release) turns
// off; count violations instead so the witness works in every build type.
static std::atomic<long> g_eigen_violations{0};
#define eigen_assert(x)             \
  do {                              \
    if (!(x)) ++g_eigen_violations; \
  } while (0)
#define EIGEN_RUNTIME_NO_MALLOC
#include <catch2/catch.hpp>
#include <cstdlib>
#include <new>

#include <moe/construction/slicing.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/presets.hpp>

#include "test_util.hpp"

// The replacement operator new below is malloc-based, so free() is its matching deallocation;
// GCC's -Wmismatched-new-delete cannot see through the replacement.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
static std::atomic<long> g_allocations{0};
void* operator new(std::size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  ++g_allocations;
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

using namespace moe;

struct NoMallocScope {
  long before = g_allocations.load(), eigen_before = g_eigen_violations.load();
  NoMallocScope() { Eigen::internal::set_is_malloc_allowed(false); }
  ~NoMallocScope() { Eigen::internal::set_is_malloc_allowed(true); }
  long allocations() const { return g_allocations.load() - before; }
  long eigen_allocations() const { return g_eigen_violations.load() - eigen_before; }
};

TEST_CASE("ffn_forward and MoELayer::forward allocate nothing after reserve", "[no_malloc]") {
  // Small enough that Eigen's GEMM blocking buffers live on the stack (under
  // EIGEN_STACK_ALLOCATION_LIMIT); Eigen's own heap blocking for large GEMMs is outside our code.
  // 600 tokens: the dense FFN in 4 row blocks, each expert ~300 rows (2 blocks); 40: ~20 rows per
  // expert, one column-major block; 1 and 5 tokens: the row-major scratch of few rows.
  const Index d = 32, dh = 64, tokens = 600;
  const FfnWeights<float> ffn = testutil::random_ffn<float>(d, dh, 1, 0.2);
  const FfnWeightsView<float> dense = ffn.view();
  const auto router = testutil::random_matrix<ColMatrix<float>>(d, 4, 4);
  const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, d, 5);
  const MoELayer<float> layer(slice_experts(dense, ExpertPartition::independent_random(dh, 4, 0)), router,
                              {2});
  RowMatrix<float> y(tokens, d);
  FfnWorkspace<float> fws;
  fws.reserve(tokens, d, dh);
  MoEWorkspace<float> ws;
  ws.reserve(layer, tokens);
  ThreadPool pool(2);
  RoutingRecord<float> rec;
  layer.forward(x, y, ws, &pool, &rec);
  for (const Index rows : rec.tokens_per_expert) REQUIRE(detail::num_row_blocks(rows) > 1);
  {
    NoMallocScope scope;
    ffn_forward<float>(dense, x, y, fws, &pool);
    ffn_forward<float>(dense, x.topRows(40), y.topRows(40), fws, &pool);
    for (Index t : {tokens, Index(40), Index(1), Index(5)})
      layer.forward(x.topRows(t), y.topRows(t), ws, &pool);
    CHECK(scope.allocations() == 0);
    CHECK(scope.eigen_allocations() == 0);
  }
  {
    NoMallocScope scope;  // both witnesses see what they should
    Eigen::MatrixXf m(40, 40);
    std::vector<int> v(3);
    CHECK(scope.eigen_allocations() > 0);
    CHECK(scope.allocations() > 0);
  }
  // Family variants: DeepSeek-V3 routing (groups, selection bias) with a gated shared expert,
  // GPT-OSS (top-k then softmax, clamped SwiGLU), LLaMA-MoE's noisy MLP gate, Switch capacity.
  RouterGate<float> v3(router);
  v3.selection_bias = testutil::random_matrix<Eigen::VectorXf>(4, 1, 6);
  MoELayer<float> deepseek(slice_experts(dense, ExpertPartition::independent_random(dh, 4, 1)), v3,
                           presets::deepseek_v3(2, 2, 1, 2.5));
  std::vector<FfnWeights<float>> shared = {testutil::random_ffn<float>(d, 8, 7, 0.2),
                                           testutil::random_ffn<float>(d, 8, 8, 0.2)};
  deepseek.set_shared_experts(shared, testutil::random_matrix<Eigen::VectorXf>(d, 1, 9));
  RouterGate<float> mlp(router);
  mlp.mlp_out = testutil::random_matrix<ColMatrix<float>>(4, 4, 10);
  mlp.noise = router;
  const std::vector<MoELayer<float>> variants = {
      deepseek,
      MoELayer<float>(slice_experts(dense, ExpertPartition::independent_random(dh, 4, 2)), router,
                      presets::gpt_oss(2)),
      MoELayer<float>(slice_experts(dense, ExpertPartition::independent_random(dh, 4, 3)), mlp,
                      presets::llama_moe_gate(2, 2.0, true, 4)),
      MoELayer<float>(slice_experts(dense, ExpertPartition::independent_random(dh, 4, 4)), router,
                      presets::switch_transformer(0.5))};
  for (const auto& v : variants) {
    MoEWorkspace<float> vws;
    vws.reserve(v, tokens);
    NoMallocScope scope;
    for (Index t : {tokens, Index(40), Index(1), Index(5)}) v.forward(x.topRows(t), y.topRows(t), vws, &pool);
    CHECK(scope.allocations() == 0);
    CHECK(scope.eigen_allocations() == 0);
  }
  // The witness works: a call that must grow the workspace is seen.
  MoEWorkspace<float> fresh;
  const long before = g_allocations.load();
  layer.forward(x, y, fresh, &pool);
  CHECK(g_allocations.load() > before);
}

TEST_CASE("bf16 experts and a bf16 dense FFN allocate nothing after reserve", "[no_malloc]") {
  // Built for this CPU too (test_no_malloc_native): with AVX512-BF16 the workspaces then also
  // hold the bf16-pair copies of the activations (detail::uses_bf16_pairs), reserved up front; in
  // 8-lane builds (both here, on a CPU without AVX-512) the token tiles of h (detail::kFloatTiles).
  const Index d = 32, dh = 64, tokens = 600;  // row blocks, as above
  const FfnWeights<float> ffn = testutil::random_ffn<float>(d, dh, 1, 0.2);
  const FfnWeights<Eigen::bfloat16> dense = convert_weights<Eigen::bfloat16>(ffn.view());
  std::vector<FfnWeights<Eigen::bfloat16>> experts;
  for (const auto& e : slice_experts(ffn.view(), ExpertPartition::independent_random(dh, 4, 0)))
    experts.push_back(convert_weights<Eigen::bfloat16>(e.view()));
  const MoELayer<float, Eigen::bfloat16> layer(experts, testutil::random_matrix<ColMatrix<float>>(d, 4, 4),
                                               {2});
  const auto x = testutil::random_matrix<RowMatrix<float>>(tokens, d, 5);
  RowMatrix<float> y(tokens, d);
  FfnWorkspace<float> fws;
  fws.reserve(dense.view(), tokens);
  MoEWorkspace<float> ws;
  ws.reserve(layer, tokens);
  ThreadPool pool(2);
  NoMallocScope scope;
  for (Index t : {tokens, Index(40), Index(1), Index(9)}) {  // 40: one column-major block
    ffn_forward<float>(dense.view(), x.topRows(t), y.topRows(t), fws, &pool);
    layer.forward(x.topRows(t), y.topRows(t), ws, &pool);
  }
  CHECK(scope.allocations() == 0);
  CHECK(scope.eigen_allocations() == 0);
}
