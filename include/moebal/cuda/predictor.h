// Lookahead-predictor (PROBE) inference kernels: the non-GEMM part of
//   logits = h W^T + b + SiLU(h W1^T) W2^T,  then top-k and a per-expert histogram.
// The two GEMMs are the caller's (cuBLAS through torch in moebal's op); these kernels fuse the rest:
// one SiLU pass over the residual branch, and one epilogue that adds gate + bias + residual, takes
// the softmax top-k per token and builds the histogram of the chosen experts.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace moebal::cuda {

/// Largest expert count and top-k the epilogue supports (one warp holds a token's logits in registers).
constexpr int32_t kProbeMaxExperts = 1024;
constexpr int32_t kProbeMaxTopK = 32;

/// out[t * dim + d] = SiLU(x[t * ld_x + d]) for t < num_tokens, d < dim (x may be a column slice of
/// a wider GEMM output, hence ld_x >= dim). Device pointers; enqueued on `stream`, no host sync.
/// Throws moebal::ValueError (before any CUDA call) when num_tokens or dim is negative, dim >= 2^31
/// or ld_x < dim.
void probe_silu(const float* x, int64_t ld_x, int64_t num_tokens, int64_t dim, float* out, cudaStream_t stream);
void probe_silu(const __nv_bfloat16* x, int64_t ld_x, int64_t num_tokens, int64_t dim, __nv_bfloat16* out,
                cudaStream_t stream);

/// Fused epilogue, one warp per token:
///   logits[t, e]    = gate[t * ld_gate + e] + bias[e] + residual[t * num_experts + e]   (float32 out)
///   topk_ids[t, :]  = the k experts of largest logit, in decreasing order (ties: lower expert id;
///                     a NaN logit ranks below every number)
///   topk_scores[t,:]= their softmax probabilities over all num_experts logits
///   counts[e]       = number of tokens whose top-k holds e (overwritten, int32 [num_experts])
/// bias (float32 [num_experts]) and residual may be null. 1 <= num_experts <= kProbeMaxExperts,
/// 1 <= k <= min(num_experts, kProbeMaxTopK); throws moebal::ValueError otherwise.
/// Device pointers; enqueued on `stream` (a memset and one kernel), no host sync.
void probe_topk_histogram(const float* gate, int64_t ld_gate, const float* residual, const float* bias,
                          int64_t num_tokens, int32_t num_experts, int32_t k, float* logits, int32_t* topk_ids,
                          float* topk_scores, int32_t* counts, cudaStream_t stream);
void probe_topk_histogram(const __nv_bfloat16* gate, int64_t ld_gate, const __nv_bfloat16* residual,
                          const float* bias, int64_t num_tokens, int32_t num_experts, int32_t k, float* logits,
                          int32_t* topk_ids, float* topk_scores, int32_t* counts, cudaStream_t stream);

}  // namespace moebal::cuda
