#include "moebal/core/metrics.h"

#include <algorithm>

#include "moebal/core/error.h"

namespace moebal::core {

static void check_match(const LoadMatrix& loads, const Placement& p) {
  MOEBAL_CHECK_ARG(loads.num_layers == p.num_layers, "loads have ", loads.num_layers,
                   " layers but the placement has ", p.num_layers);
  MOEBAL_CHECK_ARG(loads.num_experts == p.num_experts, "loads have ", loads.num_experts,
                   " experts but the placement has ", p.num_experts);
}

std::vector<double> gpu_loads(const LoadMatrix& loads, const Placement& p) {
  check_match(loads, p);
  std::vector<double> out(static_cast<size_t>(p.num_layers) * p.num_gpus, 0.0);
  for (int32_t l = 0; l < p.num_layers; ++l)
    for (int32_t s = 0; s < p.num_slots; ++s) {
      const int32_t e = p.expert_of(l, s);
      out[static_cast<size_t>(l) * p.num_gpus + p.gpu_of_slot(s)] += loads.at(l, e) / p.copies(l, e);
    }
  return out;
}

double imbalance_ratio(const double* row, int32_t n) {
  MOEBAL_CHECK_ARG(n > 0, "imbalance_ratio: need at least one GPU");
  double mx = 0, sum = 0;
  for (int32_t i = 0; i < n; ++i) {
    mx = std::max(mx, row[i]);
    sum += row[i];
  }
  return sum > 0 ? mx * n / sum : 1.0;
}

std::vector<double> layer_imbalance(const LoadMatrix& loads, const Placement& p) {
  const std::vector<double> g = gpu_loads(loads, p);
  std::vector<double> out(p.num_layers);
  for (int32_t l = 0; l < p.num_layers; ++l)
    out[l] = imbalance_ratio(g.data() + static_cast<size_t>(l) * p.num_gpus, p.num_gpus);
  return out;
}

}  // namespace moebal::core
