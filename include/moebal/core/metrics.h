// Load and imbalance metrics shared by the CLI, solvers and benchmarks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "moebal/core/placement.h"
#include "moebal/core/trace.h"

namespace moebal::core {

/// Tokens each GPU processes per layer when every expert's load is split evenly over its copies:
/// [num_layers, num_gpus]. loads and placement must agree on layers and experts.
std::vector<double> gpu_loads(const LoadMatrix& loads, const Placement& placement);

/// Imbalance ratio of one row of per-GPU loads: max / mean (1.0 when perfectly balanced, and 1.0
/// for an all-zero row).
double imbalance_ratio(const double* gpu_load, int32_t num_gpus);

/// Imbalance ratio per layer of a placement under the given loads: [num_layers].
std::vector<double> layer_imbalance(const LoadMatrix& loads, const Placement& placement);

}  // namespace moebal::core
