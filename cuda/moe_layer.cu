// The whole MoE layer: carve one workspace into the buffers of each step and enqueue the steps.
#include <cstdint>

#include "moebal/cuda/check.h"
#include "moebal/cuda/grouped_gemm.h"
#include "moebal/cuda/moe_layer.h"
#include "moebal/cuda/moe_permute.h"
#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda {
namespace {

constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Offsets of every buffer inside the workspace.
struct Carve {
  size_t ids, weights, slot_ids, offsets, row_index, sorted_token, layout_ws, x, y, ffn_ws, total;
  size_t layout_ws_bytes, ffn_ws_bytes;
};

Carve carve(const MoeShape& s) {
  const size_t pairs = static_cast<size_t>(s.num_tokens) * s.top_k;
  Carve c{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  c.ids = take(sizeof(int32_t) * pairs);
  c.weights = take(sizeof(float) * pairs);
  c.slot_ids = take(sizeof(int32_t) * pairs);
  c.offsets = take(sizeof(int32_t) * (static_cast<size_t>(s.num_slots) + 1));
  c.row_index = take(sizeof(int32_t) * pairs);
  c.sorted_token = take(sizeof(int32_t) * pairs);
  c.layout_ws_bytes = dispatch_layout_workspace_bytes(s.num_tokens, s.top_k, s.num_slots);
  c.layout_ws = take(c.layout_ws_bytes);
  c.x = take(sizeof(__nv_bfloat16) * pairs * static_cast<size_t>(s.hidden));
  c.y = take(sizeof(__nv_bfloat16) * pairs * static_cast<size_t>(s.hidden));
  c.ffn_ws_bytes = expert_ffn_workspace_bytes(s.num_slots, static_cast<int64_t>(pairs), s.ffn);
  c.ffn_ws = take(c.ffn_ws_bytes);
  c.total = at;
  return c;
}

void check_shape(const MoeShape& s) {
  MOEBAL_CHECK_ARG(s.num_tokens >= 0, "moe_forward: num_tokens must be >= 0, got ", s.num_tokens);
  MOEBAL_CHECK_ARG(s.hidden > 0 && s.hidden % 8 == 0, "moe_forward: hidden must be a positive multiple of 8, got ",
                   s.hidden);
  MOEBAL_CHECK_ARG(s.ffn > 0 && s.ffn % 8 == 0, "moe_forward: ffn must be a positive multiple of 8, got ", s.ffn);
  MOEBAL_CHECK_ARG(s.top_k >= 1, "moe_forward: top_k must be >= 1, got ", s.top_k);
  MOEBAL_CHECK_ARG(s.num_experts >= 1 && s.num_slots >= 1, "moe_forward: num_experts (", s.num_experts,
                   ") and num_slots (", s.num_slots, ") must be >= 1");
}

// The workspace carve of `shape` after checking the shape and that `workspace` holds it.
Carve checked_carve(const MoeShape& shape, const void* workspace, size_t workspace_bytes) {
  check_shape(shape);
  const Carve c = carve(shape);
  MOEBAL_CHECK_ARG(workspace_bytes >= c.total && workspace != nullptr, "moe_forward: workspace of ",
                   workspace_bytes, " bytes is too small (need ", c.total, ")");
  MOEBAL_CHECK_ARG(reinterpret_cast<uintptr_t>(workspace) % kAlign == 0,
                   "moe_forward: workspace must be 256-byte aligned");
  return c;
}

template <class T>
T* at_offset(void* base, size_t off) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

// layout_done: the layout buffers were already filled (by route_and_layout).
void run_layer(const __nv_bfloat16* hidden, const int32_t* topk_ids, const float* topk_weights,
               const __nv_bfloat16* w13, const __nv_bfloat16* w2, const MoeShape& s,
               const PlacementView& placement, __nv_bfloat16* out, void* ws, const Carve& c, bool layout_done,
               cudaStream_t stream) {
  const int64_t pairs = s.num_tokens * s.top_k;
  auto* slot_ids = at_offset<int32_t>(ws, c.slot_ids);
  auto* offsets = at_offset<int32_t>(ws, c.offsets);
  auto* row_index = at_offset<int32_t>(ws, c.row_index);
  auto* sorted_token = at_offset<int32_t>(ws, c.sorted_token);
  auto* x = at_offset<__nv_bfloat16>(ws, c.x);
  auto* y = at_offset<__nv_bfloat16>(ws, c.y);
  if (!layout_done) {
    dispatch_layout(topk_ids, s.num_tokens, s.top_k, s.num_experts, s.num_slots, placement, slot_ids,
                    offsets, row_index, sorted_token, at_offset<void>(ws, c.layout_ws), c.layout_ws_bytes,
                    stream);
  }
  // Rows of dropped pairs sit after offsets[num_slots]: the permute does not write them, the FFN
  // covers only the valid rows, and the combine skips the rest.
  permute_rows_bf16(hidden, s.num_tokens, s.hidden, row_index, s.top_k, offsets + s.num_slots, x, stream);
  expert_ffn_bf16(x, w13, w2, y, offsets, s.num_slots, pairs, s.hidden, s.ffn, at_offset<void>(ws, c.ffn_ws),
                  c.ffn_ws_bytes, stream);
  unpermute_combine_bf16(y, row_index, topk_weights, offsets + s.num_slots, s.num_tokens, s.hidden,
                         s.top_k, out, stream);
}

}  // namespace

size_t moe_forward_workspace_bytes(const MoeShape& shape) {
  check_shape(shape);
  return carve(shape).total;
}

void moe_forward_bf16(const __nv_bfloat16* hidden, const int32_t* topk_ids, const float* topk_weights,
                      const __nv_bfloat16* w13, const __nv_bfloat16* w2, const MoeShape& shape,
                      const PlacementView& placement, __nv_bfloat16* out, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream) {
  const Carve c = checked_carve(shape, workspace, workspace_bytes);
  if (shape.num_tokens == 0) return;
  run_layer(hidden, topk_ids, topk_weights, w13, w2, shape, placement, out, workspace, c, false, stream);
}

void moe_forward_bf16_from_logits(const __nv_bfloat16* hidden, const void* logits, LogitsDtype dtype,
                                  const RouterParams& params, const float* correction_bias,
                                  const __nv_bfloat16* w13, const __nv_bfloat16* w2,
                                  const MoeShape& shape, const PlacementView& placement,
                                  __nv_bfloat16* out, void* workspace, size_t workspace_bytes,
                                  cudaStream_t stream) {
  MOEBAL_CHECK_ARG(params.num_experts == shape.num_experts && params.top_k == shape.top_k,
                   "moe_forward: router params (num_experts=", params.num_experts, ", top_k=", params.top_k,
                   ") disagree with the shape (num_experts=", shape.num_experts, ", top_k=", shape.top_k, ")");
  const Carve c = checked_carve(shape, workspace, workspace_bytes);
  if (shape.num_tokens == 0) return;
  auto* ids = at_offset<int32_t>(workspace, c.ids);
  auto* weights = at_offset<float>(workspace, c.weights);
  // Router + layout: one launch at decode sizes (route_and_layout falls back to two otherwise).
  // Its workspace need equals dispatch_layout's, which the carve reserved.
  route_and_layout(logits, dtype, shape.num_tokens, params, correction_bias, shape.num_slots, placement, ids,
                   weights, at_offset<int32_t>(workspace, c.slot_ids), at_offset<int32_t>(workspace, c.offsets),
                   at_offset<int32_t>(workspace, c.row_index), at_offset<int32_t>(workspace, c.sorted_token),
                   at_offset<void>(workspace, c.layout_ws), c.layout_ws_bytes, RouteLayoutPath::kAuto, stream);
  run_layer(hidden, ids, weights, w13, w2, shape, placement, out, workspace, c, true, stream);
}

}  // namespace moebal::cuda
