// Internal interface between the grouped-GEMM front end (grouped_gemm.cu), the decode kernels
// (grouped_gemm_skinny.cu, grouped_gemm_gemv.cu, sm_80+) and the Hopper CUTLASS kernels (*_sm90.cu, compiled only for
// sm_90a). Not installed.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace moebal::cuda::detail {

struct GroupedGemmProblem {
  const __nv_bfloat16* x;   // [total_rows, k]
  const __nv_bfloat16* w;   // [num_groups, n, k]
  __nv_bfloat16* y;         // [total_rows, n]
  const int32_t* offsets;   // device, num_groups + 1
  int num_groups;
  int64_t total_rows, n, k;
  int sm_count;             // multiprocessors of the current device
  // Elements between consecutive groups' weights; 0 means n * k (packed [num_groups, n, k]). The
  // expert FFN sets 2 * ffn * hidden to address the gate or up half of each group's w13 (portable
  // and sm90 kernels only; the decode kernels take packed weights).
  int64_t w_group_stride = 0;
  // SwiGLU source [total_rows, n] (the gate projection), read by the portable kernel and the sm90 *_swiglu
  // kernels (the decode kernels fuse from w13 instead and reject it):
  // y = silu(c) * (x @ W^T), the product formed in fp32 and rounded once.
  const __nv_bfloat16* c = nullptr;
  // Only groups with rows_lo <= rows <= rows_hi are computed; the others get a zero extent and are
  // left untouched (sm90 kernels only: the split launch runs the light and the heavy groups of one
  // problem as two kernels, each over every group).
  int32_t rows_lo = 0;
  int32_t rows_hi = INT32_MAX;

  __host__ __device__ int64_t group_stride() const { return w_group_stride != 0 ? w_group_stride : n * k; }
};

// An integer tuning override from the environment (benchmarks), or `fallback` when unset or empty;
// anything else than a decimal int throws moebal::ValueError naming the variable.
int tuning_env_int(const char* name, int fallback);
// Resident CTAs per SM of `kernel` at `threads` threads and `smem` dynamic shared memory on the
// current device (cudaOccupancyMaxActiveBlocksPerMultiprocessor, asked once per kernel, launch
// shape and device: the decode kernels need it at every launch).
int resident_ctas_per_sm(const void* kernel, int threads, size_t smem);

// Decode kernel (mma.sync, weights streamed from global memory into fragments): any group size is
// correct, but the weights of a group are streamed once per 32 rows. No workspace.
void skinny_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream);
// Fused gate/up GEMM + SwiGLU epilogue: p.w is w13 [num_groups, n = 2 * ffn, k] (gate rows first),
// p.y receives act = silu(x @ W1^T) * (x @ W3^T) as [total_rows, ffn] bf16. n % 16 == 0.
void skinny_swiglu_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream);
// Decode GEMV kernel (CUDA cores, grouped_gemm_gemv.cu): each warp streams a few weight rows of one
// active group with 512-byte warp-wide loads; a group's weights are streamed once per 8 of its rows.
// No workspace.
void gemv_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream);
// The same with the skinny fused epilogue's contract: p.w is w13 [num_groups, n = 2 * ffn, k], p.y
// receives act = silu(x @ W1^T) * (x @ W3^T) as [total_rows, ffn] bf16. n % 16 == 0.
void gemv_swiglu_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream);

#if defined(MOEBAL_HAS_SM90_KERNELS)
// The Hopper kernels, one pair of entry points per tile configuration (defined by
// MOEBAL_SM90_GROUPED_GEMM_ENTRY in the *_sm90.cu files): the workspace each needs (per-group
// shapes/pointers/strides + CUTLASS's own workspace) and the launch. small_m, medium_m, large_m;
// the *_swiglu ones compute y = silu(p.c) * acc (p.c != nullptr: the up projection of the expert
// FFN after a plain gate-projection GEMM into p.c).
#define MOEBAL_SM90_GROUPED_GEMM_DECLARE(name)                                                    \
  size_t sm90_##name##_workspace_bytes(int num_groups, int sm_count);                             \
  void sm90_##name##_grouped_gemm(const GroupedGemmProblem& p, void* workspace, size_t bytes,     \
                                  cudaStream_t stream);
MOEBAL_SM90_GROUPED_GEMM_DECLARE(small_m)
MOEBAL_SM90_GROUPED_GEMM_DECLARE(medium_m)
MOEBAL_SM90_GROUPED_GEMM_DECLARE(large_m)
MOEBAL_SM90_GROUPED_GEMM_DECLARE(small_m_swiglu)
MOEBAL_SM90_GROUPED_GEMM_DECLARE(medium_m_swiglu)
MOEBAL_SM90_GROUPED_GEMM_DECLARE(large_m_swiglu)
#undef MOEBAL_SM90_GROUPED_GEMM_DECLARE
#endif

}  // namespace moebal::cuda::detail
