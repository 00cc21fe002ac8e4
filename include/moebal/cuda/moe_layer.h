// One MoE layer on one GPU as a single call: [router ->] dispatch layout -> permute -> fused
// expert FFN (grouped_gemm.h) -> weighted combine. No host synchronisation, so the whole call can
// be captured in a CUDA graph.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda {

/// Shape of one MoE layer. Weights are per physical slot: w13 [num_slots, 2 * ffn, hidden] (gate
/// rows first, then up), w2 [num_slots, hidden, ffn], as in grouped_gemm.h.
struct MoeShape {
  int64_t num_tokens = 0;
  int64_t hidden = 0;   // multiple of 8
  int64_t ffn = 0;      // multiple of 8
  int32_t top_k = 1;
  int32_t num_experts = 0;  // logical experts
  int32_t num_slots = 0;    // physical slots (== num_experts without a placement)
};

/// Bytes of device workspace moe_forward_bf16 needs (router outputs included, so the same size
/// serves both entry points).
size_t moe_forward_workspace_bytes(const MoeShape& shape);

/// out [num_tokens, hidden] = sum_j topk_weights[t, j] * FFN_{slot(t, j)}(hidden[t, :]) with
/// topk_ids int32 / topk_weights fp32 [num_tokens, top_k] (logical experts; ids outside
/// [0, num_experts) are dropped, i.e. contribute nothing) and the replica choice of
/// dispatch_layout. All device pointers; workspace of moe_forward_workspace_bytes(shape), 256-byte
/// aligned. Enqueued on `stream`; no host synchronisation.
void moe_forward_bf16(const __nv_bfloat16* hidden, const int32_t* topk_ids, const float* topk_weights,
                      const __nv_bfloat16* w13, const __nv_bfloat16* w2, const MoeShape& shape,
                      const PlacementView& placement, __nv_bfloat16* out, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream);

/// As above, routing first: router_topk(logits, params) with params.num_experts and top_k equal to
/// the shape's, then the layout; both as route_and_layout (one launch at decode sizes).
/// correction_bias: nullptr or fp32 [num_experts].
void moe_forward_bf16_from_logits(const __nv_bfloat16* hidden, const void* logits, LogitsDtype dtype,
                                  const RouterParams& params, const float* correction_bias,
                                  const __nv_bfloat16* w13, const __nv_bfloat16* w2,
                                  const MoeShape& shape, const PlacementView& placement,
                                  __nv_bfloat16* out, void* workspace, size_t workspace_bytes,
                                  cudaStream_t stream);

}  // namespace moebal::cuda
