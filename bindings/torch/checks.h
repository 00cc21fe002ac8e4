// Input checks shared by the CPU and CUDA kernels of the torch ops.
#pragma once

#include <torch/types.h>

namespace moebal::pytorch {

inline void check_topk_ids(const at::Tensor& ids, int64_t num_experts) {
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kInt, "moebal: topk_ids must be int32, got ",
                    ids.scalar_type());
  TORCH_CHECK_VALUE(ids.is_contiguous(), "moebal: topk_ids must be contiguous");
  TORCH_CHECK_VALUE(num_experts > 0 && num_experts <= (1 << 30),
                    "moebal: num_experts must be in [1, 2^30], got ", num_experts);
}

}  // namespace moebal::pytorch
