// probe_predict: the PROBE lookahead predictor's inference (and, with D = 0, the next-gate baseline).
//   X = hidden @ w_cat^T            w_cat = [W; W1]: frozen next-layer router rows, then residual W1
//   logits = X[:, :E] + bias + SiLU(X[:, E:]) @ w2^T
//   top-k of logits per token (ties: lower id), softmax scores of the chosen, per-expert counts.
// GEMMs run in the input dtype (what a bf16 router does); the epilogue accumulates in float32.
// CPU kernel here (the reference: at::mm + plain loops); CUDA kernel in predictor_cuda.cpp.
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "predictor_checks.h"
#include "checks.h"

TORCH_LIBRARY_FRAGMENT(moebal, m) {
  // Returns (logits float32 [T, E], topk_ids int32 [T, k], topk_scores float32 [T, k], counts int32 [E]).
  m.def("probe_predict(Tensor hidden, Tensor w_cat, Tensor? bias, Tensor w2, int num_experts, int k) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
}

namespace moebal::pytorch {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> probe_predict_cpu(
    const at::Tensor& hidden, const at::Tensor& w_cat, const c10::optional<at::Tensor>& bias, const at::Tensor& w2,
    int64_t num_experts, int64_t k) {
  const int64_t d = check_probe_inputs(hidden, w_cat, bias, w2, num_experts, k);
  const int64_t T = hidden.size(0), E = num_experts;
  at::Tensor x = at::mm(hidden, w_cat.t());  // [T, E + D] in the input dtype
  at::Tensor logits = x.narrow(1, 0, E).to(at::kFloat).contiguous();
  if (bias.has_value()) logits.add_(*bias);
  if (d > 0) logits.add_(at::mm(at::silu(x.narrow(1, E, d)), w2.t()).to(at::kFloat));
  at::Tensor ids = at::empty({T, k}, hidden.options().dtype(at::kInt));
  at::Tensor scores = at::empty({T, k}, hidden.options().dtype(at::kFloat));
  at::Tensor counts = at::zeros({E}, hidden.options().dtype(at::kInt));
  const float* lp = logits.data_ptr<float>();
  int32_t* ip = ids.data_ptr<int32_t>();
  float* sp = scores.data_ptr<float>();
  int32_t* cp = counts.data_ptr<int32_t>();
  std::vector<int32_t> order(E);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = lp + t * E;
    const float mx = *std::max_element(row, row + E);
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(row[e]) - mx);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (int64_t r = 0; r < k; ++r) {
      const int32_t e = order[r];
      ip[t * k + r] = e;
      sp[t * k + r] = static_cast<float>(std::exp(static_cast<double>(row[e]) - mx) / sum);
      ++cp[e];
    }
  }
  return {logits, ids, scores, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CPU, m) { m.impl("probe_predict", &ValueErrorsOf<&probe_predict_cpu>::call); }

}  // namespace moebal::pytorch
