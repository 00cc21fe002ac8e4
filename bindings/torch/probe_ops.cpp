// moebal::probe_plan: the PROBE planner as a torch op (schema + CPU reference kernel). The CUDA
// kernel is in probe_cuda.cpp; the fake kernel in python/moebal/probe_ops.py.
#include <torch/library.h>
#include <torch/types.h>

#include <limits>

#include "moebal/core/error.h"
#include "moebal/core/probe.h"
#include "probe_checks.h"
#include "checks.h"

namespace moebal::pytorch {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> probe_plan_cpu(
    const at::Tensor& counts, const at::Tensor& phy2log, const at::Tensor& fixed_us, const at::Tensor& us_per_token,
    const at::Tensor& window_us, int64_t expert_bytes, double intra_node_GBps, double inter_node_GBps,
    int64_t ranks_per_node, int64_t max_extra_slots, int64_t max_iters, double min_gain_us) {
  const auto cfg = probe_check_args(counts, phy2log, fixed_us, us_per_token, window_us, expert_bytes, intra_node_GBps,
                                    inter_node_GBps, ranks_per_node, max_extra_slots, max_iters, min_gain_us);
  const int64_t L = counts.size(0);
  ProbeOpOutputs out = probe_alloc_outputs(cfg, L, counts);
  at::Tensor ws = at::empty({static_cast<int64_t>(moebal::core::probe_workspace_bytes(cfg))},
                            counts.options().dtype(at::kByte));
  try {
    moebal::core::probe_plan(cfg, static_cast<int32_t>(L),
                             probe_raw_inputs(counts, phy2log, fixed_us, us_per_token, window_us), out.raw(),
                             ws.data_ptr(), static_cast<size_t>(ws.numel()));
  } catch (const moebal::ValueError& e) {
    TORCH_CHECK_VALUE(false, "moebal.probe_plan: ", e.what());
  }
  return out.tuple();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moebal, m) {
  // PROBE planner for a batch of layers. counts int32 [L, R, E] (predicted tokens per source rank and
  // expert), phy2log int32 [L, slots] (static placement, slot s on rank s / (slots / R)), fixed_us and
  // us_per_token float64 [R] (per-rank linear model t(n) = a + b n per expert), window_us float64
  // [L, R]. Returns quota int32 [L, R, E, R] (quota[l, src, e, dst]), replica_expert and replica_src
  // int32 [L, R, S] (-1 = unused slot), rank_time_us float64 [L, 2, R] and rank_tokens int64 [L, 2, R]
  // (before / after), stats int32 [L, 4] (moves, new replicas, window-blocked iterations, status).
  m.def(
      "probe_plan(Tensor counts, Tensor phy2log, Tensor fixed_us, Tensor us_per_token, Tensor window_us, "
      "int expert_bytes, float intra_node_GBps, float inter_node_GBps, int ranks_per_node, int max_extra_slots, "
      "int max_iters, float min_gain_us) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(moebal, CPU, m) { m.impl("probe_plan", &ValueErrorsOf<&probe_plan_cpu>::call); }

}  // namespace moebal::pytorch
