// Hopper grouped GEMM for decode-sized groups (few rows per active expert): swap-AB, 64 weight
// rows x 32 token rows x 128 k per tile, ping-pong warpgroups so one tile's epilogue overlaps the
// next tile's loads. The workload is weight streaming; 64-row tiles give 2x the CTAs of 128-row
// ones on the narrow down projections (e.g. n = 4096 over 2 experts).
#include "grouped_gemm_sm90.cuh"

namespace moebal::cuda::detail {
namespace {
using SmallM = Sm90GroupedGemm<cute::Shape<cute::_64, cute::_32, cute::_128>,
                               cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                               cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, true>;
}  // namespace

size_t sm90_small_m_workspace_bytes(int num_groups, int sm_count) {
  return SmallM::workspace_bytes(num_groups, sm_count);
}

void sm90_small_m_grouped_gemm(const GroupedGemmProblem& p, void* workspace, size_t bytes,
                               cudaStream_t stream) {
  sm90_run<SmallM>(p, workspace, bytes, stream);
}

}  // namespace moebal::cuda::detail
