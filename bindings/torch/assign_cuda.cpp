// CUDA kernel of moebal::assign_replicas: glue to moebal::cuda::assign_replicas on torch's stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "assign_checks.h"
#include "moebal/cuda/assign.h"
#include "checks.h"

namespace moebal::pytorch {
namespace {

at::Tensor assign_replicas_cuda(const at::Tensor& ids, const at::Tensor& src, const at::Tensor& log2phy,
                                const at::Tensor& logcnt, int64_t num_gpus, int64_t num_nodes, int64_t num_slots,
                                c10::string_view policy_name, const std::optional<at::Tensor>& quota,
                                const std::optional<at::Tensor>& weights) {
  const core::AssignPolicy policy = check_assign_args(ids, src, log2phy, logcnt, num_gpus, num_nodes, num_slots,
                                                      std::string(policy_name), quota, weights);
  const c10::cuda::CUDAGuard guard(ids.device());
  at::Tensor out = at::empty_like(ids);
  const core::ReplicaTable t = table_of(log2phy, logcnt, num_gpus, num_nodes, num_slots);
  const int64_t T = ids.size(0);
  const auto K = static_cast<int32_t>(ids.size(1));
  const size_t ws_bytes =
      moebal::cuda::assign_replicas_workspace_bytes(T, K, t.num_experts, t.num_gpus, t.num_nodes, policy);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes > 0 ? ws_bytes : 1)}, ids.options().dtype(at::kByte));
  moebal::cuda::assign_replicas(ids.data_ptr<int32_t>(), src.data_ptr<int32_t>(), T, K, t, policy,
                                quota ? quota->data_ptr<int32_t>() : nullptr,
                                policy == core::AssignPolicy::kWeightedLocality && weights ? weights->data_ptr<int32_t>() : nullptr,
                                out.data_ptr<int32_t>(), ws.data_ptr(), ws_bytes, at::cuda::getCurrentCUDAStream());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CUDA, m) { m.impl("assign_replicas", &ValueErrorsOf<&assign_replicas_cuda>::call); }

}  // namespace moebal::pytorch
