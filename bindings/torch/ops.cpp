// Every moebal torch op is declared here, once. Kernels live in ops_cpu.cpp / ops_cuda.cpp; the
// fake (meta) kernels are registered from Python in moebal/ops.py with the same checks.
#include <torch/library.h>

TORCH_LIBRARY(moebal, m) {
  // counts[e] = number of entries of topk_ids equal to e (int32 [num_experts]). Negative ids are
  // padding and are skipped. CPU raises on ids >= num_experts; CUDA skips them (no host sync).
  m.def("expert_histogram(Tensor topk_ids, int num_experts) -> Tensor");
}
