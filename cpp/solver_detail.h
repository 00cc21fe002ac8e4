// Internal building blocks shared by the placement policies, the lower bound and recalibration.
// Not installed; everything works on one layer and raw arrays.
#pragma once

#include <cstdint>
#include <vector>

#include "moebal/core/topology.h"

namespace moebal::core::detail {

/// EPLB's balanced packing of n items into m packs of n/m items each (see eplb_rebalance).
void eplb_pack(const double* w, int32_t n, int32_t m, int32_t* pack, int32_t* rank);
/// EPLB's replication of n experts to num_phy copies: phy2log/rank [num_phy], cnt [n].
void eplb_replicate(const double* w, int32_t n, int32_t num_phy, int32_t* phy2log, int32_t* rank,
                    int32_t* cnt);
/// One layer of EPLB. Sizes must already be validated. Outputs phy2log/phyrank [R], logcnt [E].
void eplb_layer(const double* w, int32_t E, int32_t R, int32_t groups, int32_t nodes, int32_t gpus,
                bool hierarchical, int32_t* phy2log, int32_t* phyrank, int32_t* logcnt);

/// Copy counts minimising max_e w[e] / cnt[e] subject to sum cnt = budget, 1 <= cnt[e] <= cap
/// (cap <= 0: no cap; the cap is lifted when budget > n * cap). Greedy: the next copy goes to the
/// expert with the largest load per copy (ties: lower index). This greedy is optimal for the
/// min-max objective (exchange argument: any optimal vector must give the current largest ratio an
/// extra copy before the max can drop, and the greedy never gives a copy it could take back).
void greedy_counts(const double* w, int32_t n, int32_t budget, int32_t cap, int32_t* cnt);

/// Time model of a domain's GPUs: per-GPU perf models, or null for "cost = tokens".
struct CostModel {
  const PerfModel* const* models = nullptr;
  double operator()(int32_t g, double tokens) const {
    return models ? models[g]->time_us(tokens) : tokens;
  }
};

/// Busiest-GPU cost of a domain packing: slot_expert [P*k] local expert ids, counts implied.
double packing_cost(const double* w, int32_t n, int32_t P, int32_t k, const int32_t* slot_expert,
                    const CostModel& cost);

/// Best packing found for one domain (n experts with loads w, P GPUs with k slots each, P*k >= n):
/// greedy counts (capped at P copies) + LPT + swap search, and, when start is not null, the given
/// packing [P*k] improved by the same swap search. Writes the better one to out [P*k] (each GPU's
/// slots sorted by local expert id) and returns its busiest-GPU cost.
double solve_domain(const double* w, int32_t n, int32_t P, int32_t k, const CostModel& cost,
                    const int32_t* start, int32_t* out);

/// Pairwise-swap local search on a packing in place; returns its final busiest-GPU cost.
double swap_search(const double* w, int32_t n, int32_t P, int32_t k, const CostModel& cost,
                   int32_t* slot_expert, int32_t max_iters);

/// Lower bound on the busiest GPU's load of any packing of n experts into M slots on P GPUs
/// (M / P each); see plan_metrics.cpp for the proof.
double domain_lower_bound(const double* w, int32_t n, int32_t M, int32_t P);
/// The same bound from loads sorted in descending order p[0..n) with total W.
double sorted_lower_bound(const double* p, int32_t n, double W, int32_t M, int32_t P);

/// Group -> node assignment minimising the largest per-node lower bound (exact DP over assignments;
/// secondary key: sum of squared bounds). Returns false when the instance is too large for the DP
/// (more than 16 groups or too many candidate subsets). node_groups gets, per node, its groups.
/// When `other` is not null, *other_bound receives the same bound for that assignment.
bool best_group_assignment(const double* w, int32_t E, int32_t groups, int32_t nodes,
                           int32_t slots_per_node, int32_t gpus_per_node,
                           std::vector<std::vector<int32_t>>* node_groups, double* bound,
                           const std::vector<std::vector<int32_t>>* other = nullptr,
                           double* other_bound = nullptr);

}  // namespace moebal::core::detail
