// Placement policies: DeepSeek's EPLB (baseline), `balanced` (ours) and `vibe` (speed-aware), all
// behind one request struct and one function signature. Torch-free; every routine is per layer
// independent and deterministic (no randomness, ties broken by the lower index).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moebal/core/placement.h"
#include "moebal/core/topology.h"
#include "moebal/core/trace.h"

namespace moebal::core {

/// Raw output of DeepSeek's EPLB in its own layout (see eplb_rebalance).
///  - phy2log [L, R]: logical expert held by physical slot r;
///  - phyrank [L, R]: replica rank of that slot among its expert's copies (0 = first copy);
///  - logcnt  [L, E]: copies per logical expert.
/// log2phy[l, e, phyrank[l, r]] = r for every slot r with phy2log[l, r] = e (EPLB pads with -1 up to
/// R - E + 1 copies).
struct EplbTables {
  int32_t num_layers = 0;
  int32_t num_experts = 0;
  int32_t num_replicas = 0;
  bool hierarchical = false;  // true when num_groups % num_nodes == 0 selected the hierarchical path
  std::vector<int32_t> phy2log;
  std::vector<int32_t> phyrank;
  std::vector<int32_t> logcnt;
};

/// DeepSeek EPLB (deepseek-ai/EPLB `rebalance_experts`), written from its published description.
/// weight: [num_layers, num_experts] row-major, finite and >= 0. When num_groups % num_nodes == 0 the
/// hierarchical policy runs (pack expert groups to nodes, replicate within each node by the largest
/// load per copy, pack copies to the node's GPUs); otherwise the global policy (the same with one
/// group and one node). Both packings give every pack exactly n/m items, visiting items by
/// descending weight (ties: lower index first) and choosing the lightest pack with room (ties: lower
/// pack). When every pack gets one item the packing is the identity, as in the original. Throws
/// moebal::ValueError on bad sizes (num_replicas < num_experts, num_replicas % num_gpus, and in the
/// hierarchical path num_experts % num_groups and num_gpus % num_nodes) or bad weights.
EplbTables eplb_rebalance(const double* weight, int32_t num_layers, int32_t num_experts,
                          int32_t num_replicas, int32_t num_groups, int32_t num_nodes,
                          int32_t num_gpus);

/// One placement request; every policy takes the same one and ignores what it does not use.
struct PlanRequest {
  const LoadMatrix* loads = nullptr;   // [L, E] expert loads (tokens), not owned
  int32_t num_slots = 0;               // physical expert slots per layer, over all GPUs
  int32_t num_gpus = 0;
  int32_t num_nodes = 1;
  int32_t num_groups = 1;              // expert groups (DeepSeek group-limited routing)
  const Topology* topology = nullptr;  // per-GPU perf models (vibe); not owned, may be null

  /// Throws moebal::ValueError: missing/invalid loads, layout (check_layout), and when the group
  /// constraint applies (num_groups % num_nodes == 0, num_nodes > 1): num_experts % num_groups.
  void validate() const;
  /// True when experts are grouped onto nodes, as EPLB's hierarchical policy does: every copy of
  /// every expert of a group lives on the group's node, groups_per_node groups per node.
  bool group_constrained() const { return num_nodes > 1 && num_groups % num_nodes == 0; }
};

/// Signature every placement policy has.
using PlacementPolicyFn = Placement (*)(const PlanRequest&);

struct PlacementPolicyInfo {
  const char* name;
  const char* doc;
  PlacementPolicyFn fn;
};

/// The built-in policies of this module, in a fixed order: eplb, balanced, vibe.
const std::vector<PlacementPolicyInfo>& placement_policies();
/// Runs a policy by name; throws moebal::ValueError for an unknown name.
Placement plan_placement(const std::string& policy, const PlanRequest& req);

/// DeepSeek EPLB as a Placement: EPLB's phy2log and logcnt; log2phy ascending (Placement's layout)
/// and padded to R - E + 1 copies like EPLB's (its replica-rank order: eplb_rebalance's phyrank).
Placement plan_eplb(const PlanRequest& req);

/// `balanced`: same constraints and budget as eplb (group -> node constraint when it applies), better
/// answers. Group -> node assignment: exact DP over assignments (<= 16 groups) minimising the largest
/// per-node lower bound, plus EPLB's own; copy counts by the optimal min-max-per-copy greedy; packing
/// by cardinality-constrained LPT that avoids two copies of an expert on one GPU; then best-improvement
/// pairwise swap local search on the busiest GPU. EPLB's packing improved by the same local search is
/// a second start, and per layer the final answer is never worse than plan_eplb's (checked).
Placement plan_balanced(const PlanRequest& req);

/// `vibe` (ViBE-style): like balanced, but the cost of a copy on GPU g is
/// topology->gpu_models[g].time_us(tokens of that copy) and the objective is the slowest GPU's
/// predicted time; heavy copies go to fast GPUs (speed-aware LPT + swap search). Per layer the answer
/// is never slower (predicted) than balanced's or eplb's. Needs topology with one model per GPU.
Placement plan_vibe(const PlanRequest& req);

}  // namespace moebal::core
