// CUDA kernels of the moebal torch ops: thin glue from tensors to moebal::cuda on torch's stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "checks.h"
#include "moebal/cuda/histogram.h"

namespace moebal::pytorch {
namespace {

at::Tensor expert_histogram_cuda(const at::Tensor& ids, int64_t num_experts) {
  check_topk_ids(ids, num_experts);
  const c10::cuda::CUDAGuard guard(ids.device());
  at::Tensor counts = at::empty({num_experts}, ids.options().dtype(at::kInt));
  moebal::cuda::expert_histogram(ids.data_ptr<int32_t>(), ids.numel(), static_cast<int32_t>(num_experts),
                                 counts.data_ptr<int32_t>(), at::cuda::getCurrentCUDAStream());
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CUDA, m) { m.impl("expert_histogram", &ValueErrorsOf<&expert_histogram_cuda>::call); }

}  // namespace moebal::pytorch
