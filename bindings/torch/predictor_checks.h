// Input checks of the probe_predict op, shared by its CPU and CUDA kernels (the fake kernel in
// moebal/predictor_ops.py mirrors them).
#pragma once

#include <torch/types.h>

namespace moebal::pytorch {

constexpr int64_t kProbeOpMaxExperts = 1024;
constexpr int64_t kProbeOpMaxTopK = 32;

/// Returns the residual width D = w_cat.size(0) - num_experts.
inline int64_t check_probe_inputs(const at::Tensor& hidden, const at::Tensor& w_cat, const c10::optional<at::Tensor>& bias,
                                  const at::Tensor& w2, int64_t num_experts, int64_t k) {
  TORCH_CHECK_VALUE(hidden.dim() == 2, "moebal.probe_predict: hidden must be [tokens, hidden], got ", hidden.dim(), "-D");
  TORCH_CHECK_VALUE(hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kBFloat16,
                    "moebal.probe_predict: hidden must be float32 or bfloat16, got ", hidden.scalar_type());
  TORCH_CHECK_VALUE(num_experts >= 1 && num_experts <= kProbeOpMaxExperts,
                    "moebal.probe_predict: num_experts must be in [1, ", kProbeOpMaxExperts, "], got ", num_experts);
  TORCH_CHECK_VALUE(k >= 1 && k <= num_experts && k <= kProbeOpMaxTopK, "moebal.probe_predict: k must be in [1, min(",
                    num_experts, ", ", kProbeOpMaxTopK, ")], got ", k);
  TORCH_CHECK_VALUE(w_cat.dim() == 2 && w_cat.size(1) == hidden.size(1) && w_cat.size(0) >= num_experts,
                    "moebal.probe_predict: w_cat must be [num_experts + D, hidden] = [", num_experts, " + D, ",
                    hidden.size(1), "], got ", w_cat.sizes(), " (mismatched hidden size?)");
  const int64_t d = w_cat.size(0) - num_experts;
  TORCH_CHECK_VALUE(w2.dim() == 2 && w2.size(0) == num_experts && w2.size(1) == d,
                    "moebal.probe_predict: w2 must be [num_experts, D] = [", num_experts, ", ", d, "], got ", w2.sizes());
  TORCH_CHECK_VALUE(w_cat.scalar_type() == hidden.scalar_type() && w2.scalar_type() == hidden.scalar_type(),
                    "moebal.probe_predict: w_cat and w2 must have hidden's dtype ", hidden.scalar_type(), ", got ",
                    w_cat.scalar_type(), " and ", w2.scalar_type());
  TORCH_CHECK_VALUE(hidden.is_contiguous() && w_cat.is_contiguous() && w2.is_contiguous(),
                    "moebal.probe_predict: hidden, w_cat and w2 must be contiguous");
  TORCH_CHECK_VALUE(w_cat.device() == hidden.device() && w2.device() == hidden.device(),
                    "moebal.probe_predict: all tensors must be on hidden's device ", hidden.device());
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == num_experts && b.scalar_type() == at::kFloat && b.is_contiguous(),
                      "moebal.probe_predict: bias must be contiguous float32 [", num_experts, "], got ", b.scalar_type(),
                      " ", b.sizes());
    TORCH_CHECK_VALUE(b.device() == hidden.device(), "moebal.probe_predict: bias must be on hidden's device");
  }
  return d;
}

}  // namespace moebal::pytorch
