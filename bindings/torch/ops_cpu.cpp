// CPU reference kernels of the moebal torch ops: plain loops, exact.
#include <torch/library.h>
#include <torch/types.h>

#include "checks.h"

namespace moebal::pytorch {
namespace {

at::Tensor expert_histogram_cpu(const at::Tensor& ids, int64_t num_experts) {
  check_topk_ids(ids, num_experts);
  at::Tensor counts = at::zeros({num_experts}, ids.options().dtype(at::kInt));
  const int32_t* p = ids.data_ptr<int32_t>();
  int32_t* c = counts.data_ptr<int32_t>();
  for (int64_t i = 0, n = ids.numel(); i < n; ++i) {
    if (p[i] < 0) continue;
    TORCH_CHECK_VALUE(p[i] < num_experts, "moebal: expert id ", p[i], " at flat index ", i,
                      " is >= num_experts (", num_experts, ")");
    ++c[p[i]];
  }
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CPU, m) { m.impl("expert_histogram", &ValueErrorsOf<&expert_histogram_cpu>::call); }

}  // namespace moebal::pytorch
