// moebal::assign_replicas: token -> replica slot assignment (schema + CPU reference kernel).
#include <torch/library.h>
#include <torch/types.h>

#include "assign_checks.h"
#include "checks.h"

TORCH_LIBRARY_FRAGMENT(moebal, m) {
  // slots [T, K] int32: the physical slot serving each (token, k) of topk_ids [T, K] (negative id =
  // padding -> -1) for tokens living on GPU src_rank [T], under one layer's log2phy [E, C] / logcnt
  // [E] with num_slots slots on num_gpus GPUs in num_nodes nodes. policy: round_robin | hash |
  // locality | quota | weighted_locality. quota [G, E, G] (quota policy), slot_weights [S]
  // (weighted_locality, optional). CPU raises on invalid values; CUDA writes -1 instead (no host sync).
  m.def("assign_replicas(Tensor topk_ids, Tensor src_rank, Tensor log2phy, Tensor logcnt, int num_gpus, "
        "int num_nodes, int num_slots, str policy, Tensor? quota=None, Tensor? slot_weights=None) -> Tensor");
}

namespace moebal::pytorch {
namespace {

at::Tensor assign_replicas_cpu(const at::Tensor& ids, const at::Tensor& src, const at::Tensor& log2phy,
                               const at::Tensor& logcnt, int64_t num_gpus, int64_t num_nodes, int64_t num_slots,
                               c10::string_view policy_name, const std::optional<at::Tensor>& quota,
                               const std::optional<at::Tensor>& weights) {
  const core::AssignPolicy policy = check_assign_args(ids, src, log2phy, logcnt, num_gpus, num_nodes, num_slots,
                                                      std::string(policy_name), quota, weights);
  at::Tensor out = at::empty_like(ids);
  try {
    core::assign_replicas(ids.data_ptr<int32_t>(), src.data_ptr<int32_t>(), ids.size(0),
                          static_cast<int32_t>(ids.size(1)), table_of(log2phy, logcnt, num_gpus, num_nodes, num_slots),
                          policy, quota ? quota->data_ptr<int32_t>() : nullptr,
                          policy == core::AssignPolicy::kWeightedLocality && weights ? weights->data_ptr<int32_t>() : nullptr,
                          out.data_ptr<int32_t>());
  } catch (const moebal::ValueError& e) {
    TORCH_CHECK_VALUE(false, "moebal.assign_replicas: ", e.what());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CPU, m) { m.impl("assign_replicas", &ValueErrorsOf<&assign_replicas_cpu>::call); }

}  // namespace moebal::pytorch
