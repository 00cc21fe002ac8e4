// CUDA kernel of probe_predict: two cuBLAS GEMMs through at::mm, then moebal::cuda's SiLU pass and
// fused add + top-k + histogram epilogue, all on torch's current stream (3 kernels + 1 memset + GEMMs).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "moebal/cuda/predictor.h"
#include "predictor_checks.h"
#include "checks.h"

namespace moebal::pytorch {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> probe_predict_cuda(
    const at::Tensor& hidden, const at::Tensor& w_cat, const c10::optional<at::Tensor>& bias, const at::Tensor& w2,
    int64_t num_experts, int64_t k) {
  const int64_t d = check_probe_inputs(hidden, w_cat, bias, w2, num_experts, k);
  const c10::cuda::CUDAGuard guard(hidden.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t T = hidden.size(0), E = num_experts;
  at::Tensor x = at::mm(hidden, w_cat.t());  // [T, E + D]
  at::Tensor residual;
  if (d > 0) {
    at::Tensor act = at::empty({T, d}, hidden.options());
    if (hidden.scalar_type() == at::kFloat) {
      moebal::cuda::probe_silu(x.data_ptr<float>() + E, E + d, T, d, act.data_ptr<float>(), stream);
    } else {
      moebal::cuda::probe_silu(reinterpret_cast<const __nv_bfloat16*>(x.data_ptr<at::BFloat16>()) + E, E + d, T, d,
                               reinterpret_cast<__nv_bfloat16*>(act.data_ptr<at::BFloat16>()), stream);
    }
    residual = at::mm(act, w2.t());  // [T, E]
  }
  at::Tensor logits = at::empty({T, E}, hidden.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({T, k}, hidden.options().dtype(at::kInt));
  at::Tensor scores = at::empty({T, k}, hidden.options().dtype(at::kFloat));
  at::Tensor counts = at::empty({E}, hidden.options().dtype(at::kInt));
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  if (hidden.scalar_type() == at::kFloat) {
    moebal::cuda::probe_topk_histogram(x.data_ptr<float>(), E + d, d > 0 ? residual.data_ptr<float>() : nullptr, b, T,
                                       static_cast<int32_t>(E), static_cast<int32_t>(k), logits.data_ptr<float>(),
                                       ids.data_ptr<int32_t>(), scores.data_ptr<float>(), counts.data_ptr<int32_t>(),
                                       stream);
  } else {
    const auto* res = d > 0 ? reinterpret_cast<const __nv_bfloat16*>(residual.data_ptr<at::BFloat16>()) : nullptr;
    moebal::cuda::probe_topk_histogram(reinterpret_cast<const __nv_bfloat16*>(x.data_ptr<at::BFloat16>()), E + d, res,
                                       b, T, static_cast<int32_t>(E), static_cast<int32_t>(k), logits.data_ptr<float>(),
                                       ids.data_ptr<int32_t>(), scores.data_ptr<float>(), counts.data_ptr<int32_t>(),
                                       stream);
  }
  return {logits, ids, scores, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CUDA, m) { m.impl("probe_predict", &ValueErrorsOf<&probe_predict_cuda>::call); }

}  // namespace moebal::pytorch
