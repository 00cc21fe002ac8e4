// CUDA kernels of moebal::grouped_gemm / moebal::expert_ffn: glue from tensors to
// moebal::cuda::grouped_gemm_bf16_with / expert_ffn_bf16_with on torch's current stream. Offsets are
// not validated (that would need a host synchronisation); see include/moebal/cuda/grouped_gemm.h.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "gemm_checks.h"
#include "moebal/cuda/grouped_gemm.h"
#include "checks.h"

namespace moebal::pytorch {
namespace {

const __nv_bfloat16* bf16_ptr(const at::Tensor& t) {
  return reinterpret_cast<const __nv_bfloat16*>(t.data_ptr<at::BFloat16>());
}
__nv_bfloat16* bf16_ptr_mut(at::Tensor& t) { return reinterpret_cast<__nv_bfloat16*>(t.data_ptr<at::BFloat16>()); }

at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

at::Tensor grouped_gemm_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets, int64_t kernel) {
  check_grouped_gemm(x, w, offsets);
  check_kernel_choice(kernel);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), groups = w.size(0), n = w.size(1), k = w.size(2);
  at::Tensor y = at::empty({rows, n}, x.options());
  if (rows == 0) return y;
  const size_t bytes = moebal::cuda::grouped_gemm_workspace_bytes(static_cast<int>(groups));
  at::Tensor ws = workspace(x, bytes);
  moebal::cuda::grouped_gemm_bf16_with(static_cast<moebal::cuda::GroupedGemmKernel>(kernel), bf16_ptr(x),
                                       bf16_ptr(w), bf16_ptr_mut(y), offsets.data_ptr<int32_t>(),
                                       static_cast<int>(groups), rows, n, k, ws.data_ptr(), bytes,
                                       at::cuda::getCurrentCUDAStream());
  return y;
}

at::Tensor expert_ffn_cuda(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2, const at::Tensor& offsets,
                           int64_t kernel) {
  check_expert_ffn(x, w13, w2, offsets);
  check_kernel_choice(kernel);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), groups = w13.size(0), hidden = x.size(1), ffn = w13.size(1) / 2;
  at::Tensor y = at::empty({rows, hidden}, x.options());
  if (rows == 0) return y;
  const size_t bytes = moebal::cuda::expert_ffn_workspace_bytes(static_cast<int>(groups), rows, ffn);
  at::Tensor ws = workspace(x, bytes);
  moebal::cuda::expert_ffn_bf16_with(static_cast<moebal::cuda::GroupedGemmKernel>(kernel), bf16_ptr(x),
                                     bf16_ptr(w13), bf16_ptr(w2), bf16_ptr_mut(y), offsets.data_ptr<int32_t>(),
                                     static_cast<int>(groups), rows, hidden, ffn, ws.data_ptr(), bytes,
                                     at::cuda::getCurrentCUDAStream());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CUDA, m) {
  m.impl("grouped_gemm", &ValueErrorsOf<&grouped_gemm_cuda>::call);
  m.impl("expert_ffn", &ValueErrorsOf<&expert_ffn_cuda>::call);
}

}  // namespace moebal::pytorch
