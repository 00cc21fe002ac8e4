// Embedding moebal in a C++ runtime: build per-layer expert loads, place experts, report imbalance.
#include <cstdio>
#include <vector>

#include "moebal/core/error.h"
#include "moebal/core/metrics.h"
#include "moebal/core/placement.h"
#include "moebal/core/trace.h"
#ifdef EXAMPLE_WITH_CUDA
#include "moebal/cuda/histogram.h"
#endif

int main() {
  using namespace moebal::core;
  // 2 MoE layers, 8 experts, skewed loads (tokens routed to each expert in a window of steps).
  LoadMatrix loads(2, 8, {900, 120, 80, 60, 40, 30, 20, 10,
                          50, 60, 400, 70, 80, 300, 20, 20});
  Placement p = Placement::contiguous(loads.num_layers, loads.num_experts, /*num_gpus=*/4, /*num_nodes=*/1);
  std::vector<double> ir = layer_imbalance(loads, p);
  for (int l = 0; l < loads.num_layers; ++l) std::printf("layer %d: imbalance (max/mean GPU load) %.3f\n", l, ir[l]);

  // Bad input is an exception with the field named, never a crash.
  try {
    Placement::contiguous(2, 8, 3, 1);
  } catch (const moebal::ValueError& e) {
    std::printf("rejected as expected: %s\n", e.what());
  }
#ifdef EXAMPLE_WITH_CUDA
  std::printf("moebal::cuda linked; CUDA devices visible: %d\n", moebal::cuda::device_count());
#endif
  return ir.size() == 2 ? 0 : 1;
}
