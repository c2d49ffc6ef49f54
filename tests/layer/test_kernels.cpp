// The float matmul kernels behind the FFN (few_rows_matmul: decode; many_rows_matmul: prefill),
// against a double-precision reference, for float, bfloat16 and half weights.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <moe/core/detail/rng.hpp>
#include <moe/layer/detail/few_rows_matmul.hpp>
#include <moe/layer/detail/many_rows_matmul.hpp>
#include <moe/layer/detail/transpose.hpp>
#include <vector>

using namespace moe;
using moe::detail::FloatLanes;

namespace {

/// x: rows x depth (row r at x + r·depth), W: depth x cols (column j at w + j·depth), values
/// N(0, 1); weights stored as W (rounded when W is bf16 / half).
template <class W>
struct Problem {
  Index rows, depth, cols;
  std::vector<float> x;
  std::vector<W> w;

  Problem(Index r, Index k, Index c, std::uint64_t seed) : rows(r), depth(k), cols(c) {
    detail::SplitMix64 rng(seed);
    for (Index i = 0; i < r * k; ++i) x.push_back(static_cast<float>(rng.normal()));
    for (Index i = 0; i < k * c; ++i) w.push_back(W(static_cast<float>(rng.normal())));
  }
  /// Activation k of row r as the kernel multiplies it: rounded to bf16 (to nearest even) when
  /// `rounded` (the many-rows kernel with bf16 weights and kBf16DotProducts), else as stored.
  double activation(Index r, Index k, bool rounded) const {
    const float v = x[static_cast<std::size_t>(r * depth + k)];
    return rounded ? double(static_cast<float>(Eigen::bfloat16(v))) : double(v);
  }
  double exact(Index r, Index j, bool rounded = false) const {
    double s = 0;
    for (Index k = 0; k < depth; ++k) s += activation(r, k, rounded) * detail::widen(w[j * depth + k]);
    return s;
  }
  /// Float accumulation of `depth` products: |error| <= (depth + log2 L + 1)·u·Σ|x_k·w_k| (the
  /// sequential-sum bound, u = 2^-24, with room for the final lane reduction; vdpbf16ps rounds
  /// at most once per product as well).
  double bound(Index r, Index j, bool rounded = false) const {
    double s = 0;
    for (Index k = 0; k < depth; ++k)
      s += std::abs(activation(r, k, rounded) * detail::widen(w[j * depth + k]));
    return (double(depth) + 6) * std::ldexp(1.0, -24) * s;
  }
  /// The many-rows kernel's operand: A(r, k) at a[k·ld + r], rows padded with zeros.
  std::vector<float> token_minor(Index ld) const {
    std::vector<float> a(static_cast<std::size_t>(ld * depth), 0.0f);
    for (Index r = 0; r < rows; ++r)
      for (Index k = 0; k < depth; ++k)
        a[static_cast<std::size_t>(k * ld + r)] = x[static_cast<std::size_t>(r * depth + k)];
    return a;
  }
};

/// Whether many_rows_matmul rounds the activations to bf16 for weights stored as W.
template <class W>
constexpr bool kRoundsActivations = std::is_same_v<W, Eigen::bfloat16>&& detail::kBf16DotProducts;

/// Runs both kernels on p; out(r, j) row-major for the few-rows kernel, column-major (ld padded)
/// for the many-rows kernel.
template <class W>
void run_both(const Problem<W>& p, std::vector<float>& few, std::vector<float>& many, Index& ld) {
  few.assign(static_cast<std::size_t>(p.rows * p.cols), NAN);
  detail::few_rows_matmul(p.x.data(), p.depth, p.rows, p.w.data(), p.depth, p.depth, p.cols, few.data(),
                          p.cols, 1);
  ld = detail::padded_rows(p.rows) + 16;  // a leading dimension larger than needed
  const std::vector<float> a = p.token_minor(ld);
  many.assign(static_cast<std::size_t>(ld * p.cols), NAN);
  detail::many_rows_matmul(a.data(), ld, p.rows, p.w.data(), p.depth, p.depth, p.cols, many.data(), ld);
}

template <class W>
void check_against_reference() {
  // depth: below one vector, tails of a vector, several depth blocks (256; 1024 for bf16 pairs)
  // with a tail; rows: 1..4 (few-rows tiles; many-rows panel-outer), 17 (two vectors of rows,
  // panel-outer) and 40 (three vectors, depth-block-outer; both 8-column panels), 64, 70 and 100
  // (AVX-512: 6-column panels in tiles of 4 vectors, then a last tile of 1 or 3), 150 (several row
  // chunks of the bf16-pair packing; a last tile of 2); cols: not multiples of the column tiles.
  for (Index depth : {1, 7, 16, 17, 300, 513, 2100})
    for (Index rows : {1, 2, 3, 4, 5, 17, 40, 64, 70, 100, 150})
      for (Index cols : {1, 5, 13, 27}) {
        const Problem<W> p(rows, depth, cols, static_cast<std::uint64_t>(depth * 1000 + rows * 10 + cols));
        std::vector<float> few, many;
        Index ld = 0;
        run_both(p, few, many, ld);
        double worst_few = 0, worst_many = 0;  // error / bound
        for (Index r = 0; r < rows; ++r)
          for (Index j = 0; j < cols; ++j) {
            const double e = p.exact(r, j), b = p.bound(r, j) + 1e-30;
            const double em = p.exact(r, j, kRoundsActivations<W>),
                         bm = p.bound(r, j, kRoundsActivations<W>) + 1e-30;
            worst_few = std::max(worst_few, std::abs(few[static_cast<std::size_t>(r * cols + j)] - e) / b);
            worst_many = std::max(worst_many, std::abs(many[static_cast<std::size_t>(j * ld + r)] - em) / bm);
          }
        INFO("rows=" << rows << " depth=" << depth << " cols=" << cols);
        CHECK(worst_few <= 1.0);  // NaN (an unwritten output) fails too
        CHECK(worst_many <= 1.0);
      }
}

}  // namespace

TEMPLATE_TEST_CASE("Matmul kernels agree with a double reference within the float summation bound",
                   "[kernels]", float, Eigen::bfloat16, Eigen::half) {
  check_against_reference<TestType>();
}

TEMPLATE_TEST_CASE("bf16 / half weights give bitwise the float result on the widened weights", "[kernels]",
                   Eigen::bfloat16, Eigen::half) {
  // The kernels widen exactly and then run the float code path: same products, same order
  // (except the many-rows kernel multiplying bf16 pairs: checked against its own reference above).
  for (Index rows : {1, 3, 20}) {
    const Problem<TestType> p(rows, 531, 29, 77 + static_cast<std::uint64_t>(rows));
    Problem<float> pf(rows, 531, 29, 0);
    pf.x = p.x;
    pf.w.clear();
    for (TestType v : p.w) pf.w.push_back(detail::widen(v));
    std::vector<float> few, many, few_f, many_f;
    Index ld = 0, ld_f = 0;
    run_both(p, few, many, ld);
    run_both(pf, few_f, many_f, ld_f);
    CHECK(few == few_f);
    if (kRoundsActivations<TestType>) continue;
    for (Index r = 0; r < rows; ++r)
      for (Index j = 0; j < 29; ++j)
        CHECK(many[static_cast<std::size_t>(j * ld + r)] == many_f[static_cast<std::size_t>(j * ld_f + r)]);
  }
}

TEST_CASE("A token's result does not depend on the other rows of the call (kernel level)", "[kernels]") {
  // Each output is a function of its own row and column only: tiles, panels, padding and the
  // order of panels and depth blocks (one row runs panel-outer, 100 depth-block-outer) change
  // which instructions run, never the order of a sum.
  const Problem<float> p(100, 700, 31, 5);  // many-rows tiles of 4 and 3 vectors (AVX-512)
  std::vector<float> few, many;
  Index ld = 0;
  run_both(p, few, many, ld);
  std::vector<float> few4(static_cast<std::size_t>(4 * p.cols));  // 4 rows: one 4 x 6 tile per 6 columns
  detail::few_rows_matmul(p.x.data(), p.depth, 4, p.w.data(), p.depth, p.depth, p.cols, few4.data(), p.cols,
                          1);
  for (Index r : {0, 3, 17, 36, 70, 99}) {
    Problem<float> one = p;
    one.rows = 1;
    one.x.assign(p.x.begin() + r * p.depth, p.x.begin() + (r + 1) * p.depth);
    std::vector<float> few1, many1;
    Index ld1 = 0;
    run_both(one, few1, many1, ld1);
    for (Index j = 0; j < p.cols; ++j) {
      CHECK(many1[static_cast<std::size_t>(j * ld1)] == many[static_cast<std::size_t>(j * ld + r)]);
      if (r < 4) CHECK(few1[static_cast<std::size_t>(j)] == few4[static_cast<std::size_t>(r * p.cols + j)]);
    }
  }
}

TEST_CASE("Float weights off 64-byte boundaries give the few-rows kernel's bits on aligned ones",
          "[kernels]") {
  // Off 64-byte boundaries (an address, or a column stride, that is not a multiple of 64 bytes: a
  // safetensors file's tensors) the AVX-512 few-rows tiles load each weight vector once for all
  // rows instead of once per row (kLoadWeightsOnce): the same products in the same order.
  const auto run_at = [](const Problem<float>& p, Index ldw, Index offset_floats) {
    std::vector<float> buffer(static_cast<std::size_t>(ldw * p.cols + 32));
    const auto misalignment = reinterpret_cast<std::uintptr_t>(buffer.data()) % 64 / sizeof(float);
    float* w = buffer.data() + (16 - misalignment) % 16 + offset_floats;  // 64-byte aligned + offset
    for (Index j = 0; j < p.cols; ++j) std::copy_n(p.w.begin() + j * p.depth, p.depth, w + j * ldw);
    std::vector<float> out(static_cast<std::size_t>(p.rows * p.cols), NAN);
    detail::few_rows_matmul(p.x.data(), p.depth, p.rows, w, ldw, p.depth, p.cols, out.data(), p.cols, 1);
    return out;
  };
  for (Index rows = 1; rows <= 8; ++rows) {
    // depth 512: columns 2 KB apart, aligned at offset 0; depth 300: aligned only with ldw 304.
    const Problem<float> p(rows, 512, 29, 300 + static_cast<std::uint64_t>(rows));
    const std::vector<float> aligned = run_at(p, 512, 0);
    for (Index offset : {1, 2, 4, 8}) {
      INFO("rows=" << rows << " offset=" << offset << " floats");
      CHECK(run_at(p, 512, offset) == aligned);
    }
    const Problem<float> q(rows, 300, 13, 400 + static_cast<std::uint64_t>(rows));
    INFO("rows=" << rows << " depth 300");
    CHECK(run_at(q, 300, 0) == run_at(q, 304, 0));
    CHECK(run_at(q, 300, 2) == run_at(q, 304, 0));
  }
}

TEST_CASE("FloatLanes sums lanes in a fixed tree", "[kernels]") {
  float v[FloatLanes::kWidth];
  for (int i = 0; i < FloatLanes::kWidth; ++i) v[i] = static_cast<float>(i + 1);
  CHECK(FloatLanes::load(v).sum() == FloatLanes::kWidth * (FloatLanes::kWidth + 1) / 2);
  // 1e8 + 1 - 1e8 ... in a tree: lane i pairs with lane i + L/2 first.
  for (float& x : v) x = 0.0f;
  v[0] = 1e8f;
  v[FloatLanes::kWidth / 2] = -1e8f;
  v[1] = 1.0f;
  CHECK(FloatLanes::load(v).sum() == 1.0f);
}

TEST_CASE("transpose_to_rows copies a column-major block into rows exactly", "[kernels]") {
  // Whole 16 x 16 tiles (the AVX-512 path), ragged edges (the scalar path) and both at once;
  // strides larger than the block, as the layer's scratch and padded rows are. Values never touched
  // (the destination's padding) keep their sentinel.
  const Index shapes[][2] = {{16, 16}, {1, 1}, {17, 33}, {128, 256}, {144, 44}, {5, 70}, {47, 16}};
  for (const auto& shape : shapes) {
    const Index rows = shape[0], cols = shape[1], lds = rows + 3, ldd = detail::padded_row_stride(cols);
    std::vector<float> src(static_cast<std::size_t>(lds * cols));
    detail::SplitMix64 rng(static_cast<std::uint64_t>(rows * 1000 + cols));
    for (float& v : src) v = static_cast<float>(rng.normal());
    std::vector<float> dst(static_cast<std::size_t>(ldd * rows), -7.0f);
    detail::transpose_to_rows(src.data(), lds, rows, cols, dst.data(), ldd);
    INFO("rows=" << rows << " cols=" << cols);
    bool exact = true, untouched = true;
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < ldd; ++j) {
        const float got = dst[static_cast<std::size_t>(i * ldd + j)];
        if (j < cols)
          exact = exact && got == src[static_cast<std::size_t>(j * lds + i)];
        else
          untouched = untouched && got == -7.0f;
      }
    CHECK(exact);
    CHECK(untouched);
  }
}
