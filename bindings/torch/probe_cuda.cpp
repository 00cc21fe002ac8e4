// CUDA kernel of moebal::probe_plan: glue to moebal::cuda::probe_plan on torch's current stream.
// No host synchronisation: bad input values are reported in stats[:, 3] instead of raising.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "moebal/core/error.h"
#include "moebal/cuda/probe.h"
#include "probe_checks.h"
#include "checks.h"

namespace moebal::pytorch {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> probe_plan_cuda(
    const at::Tensor& counts, const at::Tensor& phy2log, const at::Tensor& fixed_us, const at::Tensor& us_per_token,
    const at::Tensor& window_us, int64_t expert_bytes, double intra_node_GBps, double inter_node_GBps,
    int64_t ranks_per_node, int64_t max_extra_slots, int64_t max_iters, double min_gain_us) {
  const auto cfg = probe_check_args(counts, phy2log, fixed_us, us_per_token, window_us, expert_bytes, intra_node_GBps,
                                    inter_node_GBps, ranks_per_node, max_extra_slots, max_iters, min_gain_us);
  const c10::cuda::CUDAGuard guard(counts.device());
  const int64_t L = counts.size(0);
  ProbeOpOutputs out = probe_alloc_outputs(cfg, L, counts);
  if (L == 0) return out.tuple();
  try {
    const size_t wsb = moebal::cuda::probe_plan_workspace_bytes(cfg, static_cast<int32_t>(L));
    at::Tensor ws = at::empty({static_cast<int64_t>(wsb)}, counts.options().dtype(at::kByte));
    moebal::cuda::probe_plan(cfg, static_cast<int32_t>(L),
                             probe_raw_inputs(counts, phy2log, fixed_us, us_per_token, window_us), out.raw(),
                             wsb ? ws.data_ptr() : nullptr, wsb, at::cuda::getCurrentCUDAStream());
  } catch (const moebal::ValueError& e) {
    TORCH_CHECK_VALUE(false, "moebal.probe_plan: ", e.what());
  }
  return out.tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CUDA, m) { m.impl("probe_plan", &ValueErrorsOf<&probe_plan_cuda>::call); }

}  // namespace moebal::pytorch
