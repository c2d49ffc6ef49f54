// moe — matrix aliases. Tokens are rows (row-major T x d); weights use the math orientation in
// column-major storage, which is exactly the byte layout of a Hugging Face [out, in] tensor.
#pragma once

#include <Eigen/Core>
#include <cstdint>

namespace moe {

using Index = Eigen::Index;

/// Row-major dynamic matrix: activations, one token per row.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Column-major dynamic matrix: weights. `W (in x out)` column-major == HF `[out, in]` row-major.
template <class T>
using ColMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

/// Expert ids per token, row-major T x k.
using IdMatrix = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
using ConstRowRef = Eigen::Ref<const RowMatrix<T>>;
template <class T>
using RowRef = Eigen::Ref<RowMatrix<T>>;
template <class T>
using ConstColMap = Eigen::Map<const ColMatrix<T>>;

}  // namespace moe
