// Hopper grouped GEMM for prefill-sized groups: 128 token rows x 256 weight rows x 64 k per tile,
// two cooperative consumer warpgroups, TMA epilogue. Compute-bound tiles with the highest
// arithmetic intensity that fits a single CTA's shared memory with a multi-stage pipeline.
// 2x1 clusters: the two CTAs of a cluster share the weight tile through TMA multicast.
#include "grouped_gemm_sm90.cuh"

namespace moebal::cuda::detail {
namespace {
using LargeMC2 = Sm90GroupedGemm<cute::Shape<cute::_128, cute::_256, cute::_64>,
                               cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                               cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false, 2>;
}  // namespace

size_t sm90_large_m_c2_workspace_bytes(int num_groups, int sm_count) {
  return LargeMC2::workspace_bytes(num_groups, sm_count);
}

void sm90_large_m_c2_grouped_gemm(const GroupedGemmProblem& p, void* workspace, size_t bytes,
                               cudaStream_t stream) {
  sm90_run<LargeMC2>(p, workspace, bytes, stream);
}

}  // namespace moebal::cuda::detail
