// Grouped expert GEMM and expert FFN torch ops: schema and CPU reference kernels (plain fp32 loops,
// bf16 in and out). CUDA kernels: grouped_gemm_cuda.cpp. Fake kernels: python/moebal/gemm_ops.py.
#include <torch/library.h>
#include <torch/types.h>

#include <cmath>
#include <vector>

#include "gemm_checks.h"
#include "checks.h"

TORCH_LIBRARY_FRAGMENT(moebal, m) {
  // y[r] = x[r] @ w[g]^T for the rows r in [offsets[g], offsets[g+1]) of group g. x bf16 [rows, k]
  // contiguous, w bf16 [groups, n, k], offsets int32 [groups + 1], non-decreasing from 0 to rows.
  // The CPU kernel validates offsets; the CUDA kernel cannot without a host sync (it clamps them,
  // so bad offsets give wrong or unwritten rows, never out-of-bounds accesses). kernel: 0 auto,
  // 1 portable, 2 hopper_small_m, 3 hopper_large_m, 4 hopper_medium_m, 5 skinny, 6 gemv,
  // 7 hopper_split (CUDA only; the CPU kernel ignores it).
  m.def("grouped_gemm(Tensor x, Tensor w, Tensor offsets, int kernel=0) -> Tensor");
  // y = (silu(x @ W1^T) * (x @ W3^T)) @ W2^T per group, w13 [groups, 2 * ffn, hidden] stacking W1
  // (gate) over W3 (up), w2 [groups, hidden, ffn]. The silu * up intermediate is rounded to bf16.
  // kernel as for grouped_gemm; 5 (skinny) and 6 (gemv) run the gate/up GEMM with the activation
  // fused into its epilogue (CUDA only; the CPU kernel ignores it).
  m.def("expert_ffn(Tensor x, Tensor w13, Tensor w2, Tensor offsets, int kernel=0) -> Tensor");
}

namespace moebal::pytorch {
namespace {

std::vector<int64_t> checked_offsets(const at::Tensor& offsets, int64_t rows) {
  const int32_t* o = offsets.data_ptr<int32_t>();
  const int64_t n = offsets.numel();
  TORCH_CHECK_VALUE(o[0] == 0, "moebal: offsets[0] must be 0, got ", o[0]);
  for (int64_t g = 1; g < n; ++g)
    TORCH_CHECK_VALUE(o[g] >= o[g - 1], "moebal: offsets must be non-decreasing, but offsets[", g, "] = ", o[g],
                      " < offsets[", g - 1, "] = ", o[g - 1]);
  TORCH_CHECK_VALUE(o[n - 1] == rows, "moebal: offsets[-1] must equal the number of rows of x (", rows, "), got ",
                    o[n - 1]);
  return std::vector<int64_t>(o, o + n);
}

// out[r, :] = a[r, :] @ w[g]^T in fp32 for the rows of each group; a, w fp32 contiguous.
void grouped_matmul_f32(const float* a, const float* w, float* out, const std::vector<int64_t>& offs, int64_t n,
                        int64_t k) {
  for (size_t g = 0; g + 1 < offs.size(); ++g) {
    const float* wg = w + static_cast<int64_t>(g) * n * k;
    for (int64_t r = offs[g]; r < offs[g + 1]; ++r) {
      const float* ar = a + r * k;
      for (int64_t j = 0; j < n; ++j) {
        const float* wj = wg + j * k;
        float acc = 0.0f;
        for (int64_t i = 0; i < k; ++i) acc += ar[i] * wj[i];
        out[r * n + j] = acc;
      }
    }
  }
}

at::Tensor grouped_gemm_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets, int64_t kernel) {
  check_grouped_gemm(x, w, offsets);
  check_kernel_choice(kernel);
  const int64_t rows = x.size(0), n = w.size(1), k = w.size(2);
  const auto offs = checked_offsets(offsets, rows);
  const at::Tensor xf = x.to(at::kFloat).contiguous(), wf = w.to(at::kFloat).contiguous();
  at::Tensor yf = at::empty({rows, n}, x.options().dtype(at::kFloat));
  grouped_matmul_f32(xf.data_ptr<float>(), wf.data_ptr<float>(), yf.data_ptr<float>(), offs, n, k);
  return yf.to(at::kBFloat16);
}

at::Tensor expert_ffn_cpu(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2, const at::Tensor& offsets,
                          int64_t kernel) {
  check_expert_ffn(x, w13, w2, offsets);
  check_kernel_choice(kernel);
  const int64_t rows = x.size(0), hidden = x.size(1), ffn = w13.size(1) / 2;
  const auto offs = checked_offsets(offsets, rows);
  const at::Tensor xf = x.to(at::kFloat).contiguous(), w13f = w13.to(at::kFloat).contiguous();
  const at::Tensor w2f = w2.to(at::kFloat).contiguous();
  at::Tensor h = at::empty({rows, 2 * ffn}, x.options().dtype(at::kFloat));
  grouped_matmul_f32(xf.data_ptr<float>(), w13f.data_ptr<float>(), h.data_ptr<float>(), offs, 2 * ffn, hidden);
  at::Tensor act = at::empty({rows, ffn}, x.options().dtype(at::kFloat));
  const float* hp = h.data_ptr<float>();
  float* ap = act.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < ffn; ++j) {
      const float gate = hp[r * 2 * ffn + j], up = hp[r * 2 * ffn + ffn + j];
      ap[r * ffn + j] = gate / (1.0f + std::exp(-gate)) * up;
    }
  act = act.to(at::kBFloat16).to(at::kFloat);  // the second GEMM takes bf16 input, as on the GPU
  at::Tensor yf = at::empty({rows, hidden}, x.options().dtype(at::kFloat));
  grouped_matmul_f32(act.data_ptr<float>(), w2f.data_ptr<float>(), yf.data_ptr<float>(), offs, hidden, ffn);
  return yf.to(at::kBFloat16);
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CPU, m) {
  m.impl("grouped_gemm", &ValueErrorsOf<&grouped_gemm_cpu>::call);
  m.impl("expert_ffn", &ValueErrorsOf<&expert_ffn_cpu>::call);
}

}  // namespace moebal::pytorch
