// Hopper grouped GEMM for the middle regime (tens to a few hundred rows per active expert, still
// weight-bandwidth bound): swap-AB, 128 weight rows x 64 token rows x 64 k per tile, cooperative.
// A group of up to 64 rows streams each weight tile once; unlike the 128 x 256 prefill tile, a
// 40-row group does not pad to 128 rows.
#include "grouped_gemm_sm90.cuh"

namespace moebal::cuda::detail {
namespace {
using MediumM = Sm90GroupedGemm<cute::Shape<cute::_128, cute::_64, cute::_64>,
                               cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                               cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, true>;
}  // namespace

size_t sm90_medium_m_workspace_bytes(int num_groups, int sm_count) {
  return MediumM::workspace_bytes(num_groups, sm_count);
}

void sm90_medium_m_grouped_gemm(const GroupedGemmProblem& p, void* workspace, size_t bytes,
                               cudaStream_t stream) {
  sm90_run<MediumM>(p, workspace, bytes, stream);
}

}  // namespace moebal::cuda::detail
