// Input checks of the grouped GEMM / expert FFN torch ops, shared by the CPU and CUDA kernels and
// mirrored by the fake kernels in python/moebal/gemm_ops.py.
#pragma once

#include <torch/types.h>

namespace moebal::pytorch {

inline void check_bf16_matrix(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kBFloat16, "moebal: ", name, " must be bfloat16, got ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dims, "moebal: ", name, " must be ", dims, "-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "moebal: ", name, " must be contiguous");
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "moebal: ", name, " is on ", b.device(), " but x is on ",
                    a.device());
}

/// x [rows, k], w [groups, n, k], offsets int32 [groups + 1]; n and k multiples of 8.
inline void check_grouped_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets,
                               const char* w_name = "w") {
  check_bf16_matrix(x, "x", 2);
  check_bf16_matrix(w, w_name, 3);
  check_same_device(x, w, w_name);
  check_same_device(x, offsets, "offsets");
  const int64_t groups = w.size(0), n = w.size(1), k = w.size(2);
  TORCH_CHECK_VALUE(groups >= 1, "moebal: ", w_name, " must hold at least one group, got shape ", w.sizes());
  TORCH_CHECK_VALUE(x.size(1) == k, "moebal: x has ", x.size(1), " columns but ", w_name, " has k = ", k,
                    " (", w_name, " is [groups, n, k])");
  TORCH_CHECK_VALUE(n > 0 && n % 8 == 0 && k > 0 && k % 8 == 0, "moebal: n and k must be positive multiples of 8, got n = ",
                    n, ", k = ", k);
  TORCH_CHECK_VALUE(x.size(0) < (int64_t{1} << 31), "moebal: x has too many rows for int32 offsets: ", x.size(0));
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kInt, "moebal: offsets must be int32, got ", offsets.scalar_type());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) == groups + 1, "moebal: offsets must be 1-D with ",
                    groups + 1, " entries (groups + 1), got shape ", offsets.sizes());
  TORCH_CHECK_VALUE(offsets.is_contiguous(), "moebal: offsets must be contiguous");
}

/// x [rows, hidden], w13 [groups, 2 * ffn, hidden], w2 [groups, hidden, ffn].
inline void check_expert_ffn(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                             const at::Tensor& offsets) {
  check_grouped_gemm(x, w13, offsets, "w13");
  check_bf16_matrix(w2, "w2", 3);
  check_same_device(x, w2, "w2");
  const int64_t groups = w13.size(0), hidden = w13.size(2);
  TORCH_CHECK_VALUE(w13.size(1) % 16 == 0, "moebal: w13 must be [groups, 2 * ffn, hidden] with ffn a multiple of 8, got ",
                    w13.sizes());
  const int64_t ffn = w13.size(1) / 2;
  TORCH_CHECK_VALUE(w2.size(0) == groups && w2.size(1) == hidden && w2.size(2) == ffn, "moebal: w2 must be [", groups,
                    ", ", hidden, ", ", ffn, "] (groups, hidden, ffn) to match w13 ", w13.sizes(), ", got ", w2.sizes());
}

inline void check_kernel_choice(int64_t kernel) {
  TORCH_CHECK_VALUE(kernel >= 0 && kernel <= 7, "moebal: kernel must be 0 (auto), 1 (portable), 2 (hopper_small_m), ",
                    "3 (hopper_large_m), 4 (hopper_medium_m), 5 (skinny), 6 (gemv) or 7 (hopper_split), got ", kernel);
}

}  // namespace moebal::pytorch
