// GRACE-MoE placement: hierarchical co-activation grouping + replication of hot experts by skew.
//
// Per layer, from the co-activation matrix A (A[i][j] = tokens that chose both i and j):
//  1. Node level: spectral clustering of A into num_nodes groups, "fully non-uniform" (any size
//     from 1 up to the node's slot capacity).
//  2. GPU level, inside each node: spectral clustering into gpus_per_node groups with sizes in
//     [base - delta, base + delta], base = floor(n / D), delta = max(1, round(base * r)), capped by
//     the GPU's slot count (the paper's Algorithm 2 repair: peel the weakest members of oversized
//     groups, re-home them by affinity, then feed undersized groups). Both levels then run a
//     move/swap local search that raises intra-group affinity within the size bounds without
//     letting any group's load exceed the heaviest group's load before the search (our addition;
//     refine_passes = 0 gives the paper's procedure alone).
//  3. Replication by skew on the slots left free: rho = W_max / W_mean over GPU loads,
//     n_replica = min(max(1, floor(rho)), num_gpus - 1); the hot experts of the heaviest GPU are
//     the shortest prefix (by load) reaching W_max * n / (n + 1); each gets copies on the n least
//     loaded GPUs with a free slot. Repeated on the updated loads until the slots run out or the
//     heaviest GPU cannot be relieved. Slots still free (ours): the least-loaded GPU with a free
//     slot takes a copy of the expert with the highest load per copy that it does not hold and
//     that does not make it the heaviest GPU (else the copy adding the least load).
// moebal fixes num_slots / num_gpus slots per GPU, so the paper's non-uniform group sizes can only
// use spare slots: a GPU holding fewer primaries than slots gets more replicas. With no spare slots
// (num_slots == num_experts) every GPU holds exactly num_experts / num_gpus experts.
#pragma once

#include <cstdint>
#include <vector>

#include "moebal/core/placement.h"
#include "moebal/core/trace.h"

namespace moebal::core {

struct GraceOptions {
  double r = 0.15;              ///< GPU-level size tolerance (delta = max(1, round(base * r)))
  int32_t power_iters = 300;    ///< cap on orthogonal-iteration steps of the spectral embedding
  int32_t kmeans_restarts = 8;  ///< k-means++ restarts; the lowest inertia wins
  int32_t refine_passes = 8;    ///< move/swap local-search passes after the repair (0 = paper only)
  /// Load balance of the groups (ours; < 0 = off, the paper's behaviour): before the affinity
  /// search, moves/swaps lower every group's load to <= (1 + balance_tol) x mean where expert
  /// granularity allows, losing as little co-activation as possible.
  double balance_tol = -1.0;
  uint64_t seed = 0x6a09e667f3bcc908ull;
  void validate() const;
};

/// Groups `members` (expert ids) into num_groups groups of sizes in [min_size, max_size] using the
/// symmetric affinity `coact` [num_experts, num_experts] (diagonal ignored): spectral clustering
/// (normalised affinity, orthogonal iteration, row-normalised embedding, k-means++) then the
/// size repair, then the move/swap refinement, which never lets a group's load (sum of `loads`
/// [num_experts] over members; null = ignore load) exceed the heaviest group's load before it.
/// Returns the group of each member (same order). Deterministic for a given seed.
/// Throws ValueError if the sizes are infeasible (num_groups * min_size > n or num_groups *
/// max_size < n).
std::vector<int32_t> constrained_spectral_groups(const double* coact, int32_t num_experts,
                                                 const std::vector<int32_t>& members, int32_t num_groups,
                                                 int32_t min_size, int32_t max_size,
                                                 const GraceOptions& opt = {}, const double* loads = nullptr);

/// Primary GPU of every expert of one layer (steps 1-2): [num_experts], each GPU holding at most
/// slots_per_gpu experts. loads [num_experts] (or null) bound the refinement as above.
std::vector<int32_t> grace_grouping(const double* coact, int32_t num_experts, int32_t num_gpus,
                                    int32_t num_nodes, int32_t slots_per_gpu, const GraceOptions& opt = {},
                                    const double* loads = nullptr);

/// Share of the off-diagonal co-activation mass whose two experts share a group (U of the paper).
double intra_group_affinity(const double* coact, int32_t num_experts, const int32_t* group_of);

/// The paper's choice of r (App. A.1): for each candidate r, group every layer (grace_grouping)
/// and measure U(r) = intra-GPU share of co-activation and S(r) = RMS deviation of GPU group sizes
/// from E / G, both averaged over layers; return the knee of the (S, U) curve, the candidate
/// farthest from the chord between the first and last points (both axes scaled to [0, 1]).
/// The result holds the curves too. Candidates must be non-empty, each in [0, 1].
struct KneeResult {
  double r = 0.15;
  std::vector<double> candidates, u, s;
};
KneeResult grace_knee_r(const std::vector<double>& coact, int32_t num_layers, int32_t num_experts,
                        int32_t num_gpus, int32_t num_nodes, int32_t slots_per_gpu,
                        const std::vector<double>& candidates, const GraceOptions& opt = {});

/// The full plan for every layer. coact is [L, E, E] (e.g. RoutingTrace::coactivation per layer);
/// loads drive replication.
Placement grace_plan(const LoadMatrix& loads, const std::vector<double>& coact, int32_t num_slots,
                     int32_t num_gpus, int32_t num_nodes, const GraceOptions& opt = {});
/// Same, co-activation taken from the trace (which must match loads in layers and experts).
Placement grace_plan(const LoadMatrix& loads, const RoutingTrace& trace, int32_t num_slots,
                     int32_t num_gpus, int32_t num_nodes, const GraceOptions& opt = {});

}  // namespace moebal::core
