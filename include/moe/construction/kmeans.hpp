// moe — k-means for expert construction: balanced (every cluster the same size, for neurons) and
// plain (for calibration tokens), both seeded with k-means++ from SplitMix64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/detail/rng.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// A clustering of n points: labels[p] in [0, k), centroids k x dim, objective
/// Σ_p ||x_p − μ_label(p)||², and the Lloyd iterations run.
struct KMeansResult {
  std::vector<int> labels;
  RowMatrix<double> centroids;
  double objective = 0;
  int iterations = 0;
};

namespace detail {

inline void check_kmeans_input(const ConstRowRef<double>& points, int k, const char* who) {
  MOE_CHECK(k > 0, who << ": number of clusters must be positive, got " << k);
  MOE_CHECK(points.rows() >= k,
            who << ": cannot make " << k << " non-empty clusters of " << points.rows() << " points");
  MOE_CHECK(points.cols() > 0, who << ": points have no coordinates");
  MOE_CHECK(points.allFinite(), who << ": points contain NaN or infinity");
}

/// cost(p, j) = ||x_p − μ_j||² for every point and centroid (n x k).
inline RowMatrix<double> squared_distances(const ConstRowRef<double>& points,
                                           const RowMatrix<double>& centroids) {
  RowMatrix<double> cost = -2.0 * points * centroids.transpose();
  cost.colwise() += points.rowwise().squaredNorm();
  cost.rowwise() += centroids.rowwise().squaredNorm().transpose();
  return cost.cwiseMax(0.0);  // rounding can push a zero distance below 0
}

/// k-means++ (Arthur & Vassilvitskii 2007): first centre uniform, each next one drawn with
/// probability proportional to its squared distance from the nearest centre chosen so far.
inline RowMatrix<double> kmeans_plus_plus(const ConstRowRef<double>& points, int k, SplitMix64& rng) {
  const Index n = points.rows();
  RowMatrix<double> c(k, points.cols());
  c.row(0) = points.row(static_cast<Index>(rng.below(static_cast<std::uint64_t>(n))));
  Eigen::VectorXd nearest = (points.rowwise() - c.row(0)).rowwise().squaredNorm();
  for (int j = 1; j < k; ++j) {
    const double total = nearest.sum();
    Index pick = 0;
    if (total > 0) {
      double r = rng.uniform() * total;
      pick = n - 1;
      for (Index p = 0; p < n; ++p) {
        r -= nearest[p];
        if (r < 0 && nearest[p] > 0) {
          pick = p;
          break;
        }
      }
    } else {  // every point sits on a centre already: any point will do
      pick = static_cast<Index>(rng.below(static_cast<std::uint64_t>(n)));
    }
    c.row(j) = points.row(pick);
    nearest = nearest.cwiseMin((points.rowwise() - c.row(j)).rowwise().squaredNorm());
  }
  return c;
}

inline void update_centroids(const ConstRowRef<double>& points, const std::vector<int>& labels,
                             RowMatrix<double>& centroids) {
  centroids.setZero();
  std::vector<Index> count(static_cast<std::size_t>(centroids.rows()), 0);
  for (Index p = 0; p < points.rows(); ++p) {
    centroids.row(labels[static_cast<std::size_t>(p)]) += points.row(p);
    ++count[static_cast<std::size_t>(labels[static_cast<std::size_t>(p)])];
  }
  for (Index j = 0; j < centroids.rows(); ++j)
    if (count[static_cast<std::size_t>(j)] > 0)
      centroids.row(j) /= static_cast<double>(count[static_cast<std::size_t>(j)]);
}

/// For balanced_assignment: move(a, b), the cheapest move of one member q of cluster a into
/// cluster b, cost(q, b) − cost(q, a) (+inf if a has no members), and move_point(a, b), that q.
inline void cheapest_moves(const RowMatrix<double>& cost, const std::vector<std::vector<Index>>& members,
                           RowMatrix<double>& move, IdMatrix& move_point) {
  const auto k = static_cast<int>(cost.cols());
  move.setConstant(std::numeric_limits<double>::infinity());
  for (int a = 0; a < k; ++a)
    for (const Index q : members[static_cast<std::size_t>(a)])
      for (int b = 0; b < k; ++b) {
        const double c = cost(q, b) - cost(q, a);
        if (b != a && c < move(a, b)) {
          move(a, b) = c;
          move_point(a, b) = static_cast<std::int32_t>(q);
        }
      }
}

/// For balanced_assignment: Bellman–Ford over the k clusters from point p: dist[j], the cheapest
/// way to place p into cluster j directly or by a chain of moves; pred[j], the cluster the
/// chain's last move came from (-1: p itself goes to j).
inline void shortest_placements(const RowMatrix<double>& cost, Index p, const RowMatrix<double>& move,
                                std::vector<double>& dist, std::vector<int>& pred) {
  const auto k = static_cast<int>(cost.cols());
  for (int j = 0; j < k; ++j) {
    dist[static_cast<std::size_t>(j)] = cost(p, j);
    pred[static_cast<std::size_t>(j)] = -1;
  }
  for (int round = 0; round < k; ++round) {
    bool changed = false;
    for (int a = 0; a < k; ++a)
      for (int b = 0; b < k; ++b) {
        const double via = dist[static_cast<std::size_t>(a)] + move(a, b);
        // The slack keeps rounding from creating a zero-cost cycle of moves.
        if (via < dist[static_cast<std::size_t>(b)] - 1e-12 * (1 + std::abs(via))) {
          dist[static_cast<std::size_t>(b)] = via;
          pred[static_cast<std::size_t>(b)] = a;
          changed = true;
        }
      }
    if (!changed) break;
  }
}

/// Minimum-cost assignment of n points to k clusters with exactly capacity[j] points each
/// (Σ capacity = n): successive shortest paths, one point at a time, as in the Hungarian method.
/// The residual graph collapses onto the k clusters: moving an assigned point q from cluster a
/// to b costs cost(q,b) − cost(q,a), so a shortest path is Bellman–Ford over k nodes. Each step
/// keeps the assignment of the points placed so far optimal, so the last one is optimal for all.
/// O(n² k) time.
inline std::vector<int> balanced_assignment(const RowMatrix<double>& cost,
                                            const std::vector<Index>& capacity) {
  const Index n = cost.rows();
  const auto k = static_cast<int>(cost.cols());
  std::vector<int> label(static_cast<std::size_t>(n), -1);
  std::vector<Index> size(static_cast<std::size_t>(k), 0);
  std::vector<std::vector<Index>> members(static_cast<std::size_t>(k));
  RowMatrix<double> move(k, k);
  IdMatrix move_point(k, k);
  std::vector<double> dist(static_cast<std::size_t>(k));
  std::vector<int> pred(static_cast<std::size_t>(k));
  for (Index p = 0; p < n; ++p) {
    cheapest_moves(cost, members, move, move_point);
    shortest_placements(cost, p, move, dist, pred);
    int target = -1;  // the cheapest cluster with room
    for (int j = 0; j < k; ++j)
      if (size[static_cast<std::size_t>(j)] < capacity[static_cast<std::size_t>(j)] &&
          (target < 0 || dist[static_cast<std::size_t>(j)] < dist[static_cast<std::size_t>(target)]))
        target = j;
    MOE_CHECK(target >= 0, "balanced_assignment: capacities sum to less than the " << n << " points");
    ++size[static_cast<std::size_t>(target)];
    int j = target;  // apply the chain of moves back to p's own cluster
    for (int steps = 0; pred[static_cast<std::size_t>(j)] >= 0; ++steps) {
      MOE_CHECK(steps < k, "balanced_assignment: internal error (cycle of moves)");
      const int a = pred[static_cast<std::size_t>(j)];
      const Index q = move_point(a, j);
      label[static_cast<std::size_t>(q)] = j;
      auto& from = members[static_cast<std::size_t>(a)];
      from.erase(std::find(from.begin(), from.end(), q));
      members[static_cast<std::size_t>(j)].push_back(q);
      j = a;
    }
    label[static_cast<std::size_t>(p)] = j;
    members[static_cast<std::size_t>(j)].push_back(p);
  }
  return label;
}

inline double kmeans_objective(const RowMatrix<double>& cost, const std::vector<int>& labels) {
  double sum = 0;
  for (Index p = 0; p < cost.rows(); ++p) sum += cost(p, labels[static_cast<std::size_t>(p)]);
  return sum;
}

}  // namespace detail

/// Balanced k-means: k clusters of exactly n/k points (with n % k = r != 0, the first r clusters
/// get one more). k-means++ seeding from SplitMix64(seed), then Lloyd iterations whose assignment
/// step is the exact minimum-cost balanced assignment, so the objective never increases; stops when
/// no label changes or after max_iter. points: n x dim, one point per row.
inline KMeansResult balanced_kmeans(const ConstRowRef<double>& points, int k, std::uint64_t seed,
                                    int max_iter = 100) {
  detail::check_kmeans_input(points, k, "balanced_kmeans");
  const Index n = points.rows();
  std::vector<Index> capacity(static_cast<std::size_t>(k), n / k);
  for (Index j = 0; j < n % k; ++j) ++capacity[static_cast<std::size_t>(j)];
  detail::SplitMix64 rng(seed);
  KMeansResult r;
  r.centroids = detail::kmeans_plus_plus(points, k, rng);
  for (r.iterations = 1; r.iterations <= max_iter; ++r.iterations) {
    std::vector<int> labels =
        detail::balanced_assignment(detail::squared_distances(points, r.centroids), capacity);
    const bool same = labels == r.labels;
    r.labels = std::move(labels);
    if (same) break;
    detail::update_centroids(points, r.labels, r.centroids);
  }
  r.iterations = std::min(r.iterations, max_iter);
  r.objective = detail::kmeans_objective(detail::squared_distances(points, r.centroids), r.labels);
  return r;
}

/// Plain k-means (Lloyd) with k-means++ seeding; a cluster left empty takes the point farthest
/// from its centre, so every cluster keeps at least one point. Ties go to the lower cluster.
inline KMeansResult kmeans(const ConstRowRef<double>& points, int k, std::uint64_t seed, int max_iter = 100) {
  detail::check_kmeans_input(points, k, "kmeans");
  detail::SplitMix64 rng(seed);
  KMeansResult r;
  r.centroids = detail::kmeans_plus_plus(points, k, rng);
  for (r.iterations = 1; r.iterations <= max_iter; ++r.iterations) {
    const RowMatrix<double> cost = detail::squared_distances(points, r.centroids);
    std::vector<int> labels(static_cast<std::size_t>(points.rows()));
    std::vector<Index> count(static_cast<std::size_t>(k), 0);
    for (Index p = 0; p < points.rows(); ++p) {
      Index j = 0;
      cost.row(p).minCoeff(&j);
      labels[static_cast<std::size_t>(p)] = static_cast<int>(j);
      ++count[static_cast<std::size_t>(j)];
    }
    for (int j = 0; j < k; ++j) {
      if (count[static_cast<std::size_t>(j)] > 0) continue;
      Index far = -1;
      double worst = -1;
      for (Index p = 0; p < points.rows(); ++p) {
        const auto lp = static_cast<std::size_t>(labels[static_cast<std::size_t>(p)]);
        if (count[lp] > 1 && cost(p, labels[static_cast<std::size_t>(p)]) > worst) {
          worst = cost(p, labels[static_cast<std::size_t>(p)]);
          far = p;
        }
      }
      --count[static_cast<std::size_t>(labels[static_cast<std::size_t>(far)])];
      labels[static_cast<std::size_t>(far)] = j;
      count[static_cast<std::size_t>(j)] = 1;
    }
    const bool same = labels == r.labels;
    r.labels = std::move(labels);
    if (same) break;
    detail::update_centroids(points, r.labels, r.centroids);
  }
  r.iterations = std::min(r.iterations, max_iter);
  r.objective = detail::kmeans_objective(detail::squared_distances(points, r.centroids), r.labels);
  return r;
}

}  // namespace moe
