// Quality metrics of a placement: imbalance, predicted step time under per-GPU performance models,
// memory spent on copies, and a provable lower bound on the best achievable busiest-GPU load, so
// every policy's gap to optimal is visible. Loads of an expert are split evenly over its copies (the
// same model as gpu_loads in metrics.h).
#pragma once

#include <cstdint>
#include <vector>

#include "moebal/core/placement.h"
#include "moebal/core/topology.h"
#include "moebal/core/trace.h"

namespace moebal::core {

/// Lower bound on min over placements of the busiest GPU's load for one layer's loads w[0..E),
/// num_slots slots over num_gpus GPUs (num_slots / num_gpus each), num_nodes nodes. When
/// num_groups % num_nodes == 0 and num_nodes > 1 it bounds placements that keep every group on one
/// node (EPLB's hierarchical constraint, which eplb/balanced/vibe honour); pass num_groups = 1 for
/// the bound of unconstrained placements. See plan_metrics.cpp for the proof.
double layer_lower_bound(const double* w, int32_t num_experts, int32_t num_slots, int32_t num_gpus,
                         int32_t num_nodes = 1, int32_t num_groups = 1);

/// layer_lower_bound for every layer: [L].
std::vector<double> lower_bounds(const LoadMatrix& loads, int32_t num_slots, int32_t num_gpus,
                                 int32_t num_nodes = 1, int32_t num_groups = 1);

/// Lower bound (us) on the predicted step time (slowest GPU) of one layer over every placement, under
/// roofline copy times: on GPU g a copy with n > 0 tokens takes
/// slowdown[g] * max(read_us, us_per_token * n) and an empty copy 0 (what
/// moebal.solvers.h100_expert_model(shape, slowdown) predicts), loads split evenly over copies.
/// slowdown: [num_gpus], finite and > 0. num_groups as in layer_lower_bound: with the group
/// constraint it also bounds, per node, the placements that keep groups on nodes (exact DP over
/// group -> node assignments while it is small). See plan_metrics.cpp for the proof. Throws
/// moebal::ValueError on bad sizes, loads, times or slowdowns.
double layer_time_lower_bound(const double* w, int32_t num_experts, int32_t num_slots, int32_t num_gpus,
                              int32_t num_nodes, int32_t num_groups, double read_us,
                              double us_per_token, const double* slowdown);

/// layer_time_lower_bound for every layer: [L]. slowdown: one per GPU.
std::vector<double> time_lower_bounds(const LoadMatrix& loads, int32_t num_slots, int32_t num_gpus,
                                      int32_t num_nodes, int32_t num_groups, double read_us,
                                      double us_per_token, const std::vector<double>& slowdown);

/// Predicted time (us) of every GPU per layer: sum over the GPU's slots of
/// models[g].time_us(load of the slot's expert / its copies). [L, G]. models: one per GPU.
std::vector<double> gpu_times(const LoadMatrix& loads, const Placement& placement,
                              const std::vector<PerfModel>& models);

/// Predicted MoE step time per layer: max over GPUs of gpu_times. [L].
std::vector<double> layer_step_times(const LoadMatrix& loads, const Placement& placement,
                                     const std::vector<PerfModel>& models);

/// Bytes of expert weights held beyond one copy per expert, summed over layers:
/// (num_slots - num_experts) * num_layers * shape.weight_bytes().
int64_t extra_expert_bytes(const Placement& placement, const ExpertShape& shape);

/// Summary of a placement under loads (and optionally models).
struct PlanMetrics {
  std::vector<double> layer_ir;           // [L] max/mean tokens per GPU
  std::vector<double> layer_max_load;     // [L] tokens on the busiest GPU
  std::vector<double> layer_lower_bound;  // [L] layer_lower_bound for the same budget
  std::vector<double> layer_step_us;      // [L] predicted step time, empty without models
  double mean_ir = 0;                     // mean of layer_ir
  double max_ir = 0;
  double gap = 0;       // sum(layer_max_load) / sum(layer_lower_bound) - 1  (>= 0 up to rounding)
  double step_us = 0;   // sum over layers of layer_step_us (0 without models)
  int64_t extra_copies = 0;  // sum over layers of (num_slots - num_experts)
  int64_t extra_bytes = 0;   // extra_copies * weight_bytes (0 without a shape)
};

/// Evaluates a placement. models: empty or one per GPU; shape may be null; num_groups selects the
/// lower bound (see layer_lower_bound).
PlanMetrics evaluate_plan(const LoadMatrix& loads, const Placement& placement,
                          const std::vector<PerfModel>& models = {}, const ExpertShape* shape = nullptr,
                          int32_t num_groups = 1);

}  // namespace moebal::core
