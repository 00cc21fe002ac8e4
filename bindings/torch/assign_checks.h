// Input checks of moebal::assign_replicas shared by its CPU and CUDA kernels (mirrored by the fake
// kernel in python/moebal/assign_ops.py).
#pragma once

#include <torch/types.h>

#include <optional>
#include <string>

#include "moebal/core/assign.h"
#include "moebal/core/error.h"

namespace moebal::pytorch {

inline void check_int_tensor(const at::Tensor& x, const char* name, int64_t dim, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kInt, "moebal.assign_replicas: ", name, " must be int32, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == dim, "moebal.assign_replicas: ", name, " must be ", dim, "-d, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == ref.device(), "moebal.assign_replicas: ", name, " is on ", x.device(),
                    " but topk_ids is on ", ref.device());
  TORCH_CHECK_VALUE(x.is_contiguous(), "moebal.assign_replicas: ", name, " must be contiguous");
}

/// Validates shapes, dtypes, devices and the layout; returns the parsed policy.
inline core::AssignPolicy check_assign_args(const at::Tensor& ids, const at::Tensor& src, const at::Tensor& log2phy,
                                            const at::Tensor& logcnt, int64_t num_gpus, int64_t num_nodes,
                                            int64_t num_slots, const std::string& policy_name,
                                            const std::optional<at::Tensor>& quota,
                                            const std::optional<at::Tensor>& weights) {
  core::AssignPolicy policy;
  try {
    policy = core::parse_assign_policy(policy_name);
  } catch (const moebal::ValueError& e) {
    TORCH_CHECK_VALUE(false, "moebal.assign_replicas: ", e.what());
  }
  check_int_tensor(ids, "topk_ids", 2, ids);
  check_int_tensor(src, "src_rank", 1, ids);
  check_int_tensor(log2phy, "log2phy", 2, ids);
  check_int_tensor(logcnt, "logcnt", 1, ids);
  const int64_t T = ids.size(0), E = log2phy.size(0);
  TORCH_CHECK_VALUE(ids.size(1) >= 1, "moebal.assign_replicas: topk_ids must have top_k >= 1 columns, got shape ",
                    ids.sizes());
  TORCH_CHECK_VALUE(src.size(0) == T, "moebal.assign_replicas: src_rank has ", src.size(0), " entries but topk_ids has ",
                    T, " tokens");
  TORCH_CHECK_VALUE(E >= 1 && log2phy.size(1) >= 1, "moebal.assign_replicas: log2phy must be [num_experts, max_copies] with both >= 1, got ",
                    log2phy.sizes());
  TORCH_CHECK_VALUE(logcnt.size(0) == E, "moebal.assign_replicas: logcnt has ", logcnt.size(0),
                    " entries but log2phy has ", E, " experts");
  TORCH_CHECK_VALUE(num_gpus >= 1 && num_nodes >= 1 && num_gpus % num_nodes == 0 && num_gpus <= (1 << 16),
                    "moebal.assign_replicas: num_gpus (", num_gpus, ") must be >= 1 and divisible by num_nodes (", num_nodes, ")");
  TORCH_CHECK_VALUE(num_slots >= E && num_slots % num_gpus == 0 && num_slots < (int64_t{1} << 30),
                    "moebal.assign_replicas: num_slots (", num_slots, ") must be >= num_experts (", E,
                    ") and divisible by num_gpus (", num_gpus, ")");
  TORCH_CHECK_VALUE(T * ids.size(1) < (int64_t{1} << 31), "moebal.assign_replicas: too many entries");
  if (policy == core::AssignPolicy::kQuota) {
    TORCH_CHECK_VALUE(quota.has_value(), "moebal.assign_replicas: policy 'quota' needs quota [num_gpus, num_experts, num_gpus]");
  }
  if (quota.has_value()) {
    check_int_tensor(*quota, "quota", 3, ids);
    TORCH_CHECK_VALUE(quota->size(0) == num_gpus && quota->size(1) == E && quota->size(2) == num_gpus,
                      "moebal.assign_replicas: quota must have shape [", num_gpus, ", ", E, ", ", num_gpus, "], got ",
                      quota->sizes());
  }
  if (weights.has_value()) {
    check_int_tensor(*weights, "slot_weights", 1, ids);
    TORCH_CHECK_VALUE(weights->size(0) == num_slots, "moebal.assign_replicas: slot_weights must have num_slots=",
                      num_slots, " entries, got ", weights->size(0));
  }
  return policy;
}

inline core::ReplicaTable table_of(const at::Tensor& log2phy, const at::Tensor& logcnt, int64_t num_gpus,
                                   int64_t num_nodes, int64_t num_slots) {
  core::ReplicaTable t;
  t.log2phy = log2phy.data_ptr<int32_t>();
  t.logcnt = logcnt.data_ptr<int32_t>();
  t.num_experts = static_cast<int32_t>(log2phy.size(0));
  t.max_copies = static_cast<int32_t>(log2phy.size(1));
  t.num_slots = static_cast<int32_t>(num_slots);
  t.num_gpus = static_cast<int32_t>(num_gpus);
  t.num_nodes = static_cast<int32_t>(num_nodes);
  return t;
}

}  // namespace moebal::pytorch
