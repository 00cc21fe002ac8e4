// MoE routing on the GPU: router scores -> top-k experts, and the replica-aware dispatch layout
// (which physical slot serves each (token, k) pair and where its row sits in the slot-sorted
// buffer). Raw device pointers, caller's stream, no host synchronisation.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace moebal::cuda {

/// How router logits become expert scores.
enum class RouterScoring : int32_t {
  kSoftmax = 0,  // softmax over all experts (Mixtral, Qwen3-MoE, GPT-OSS with renormalize)
  kSigmoid = 1,  // independent sigmoid per expert (DeepSeek-V3)
};

/// Element type of the router logits.
enum class LogitsDtype : int32_t { kFloat32 = 0, kBFloat16 = 1 };

/// Router configuration. Semantics (per token, all arithmetic in fp32):
///  1. s[e] = softmax(logits)[e] or sigmoid(logits[e]);
///  2. choice[e] = s[e] + correction_bias[e] (bias optional; zero when absent);
///  3. if num_groups > 1: experts split into num_groups equal contiguous groups; a group's score is
///     the sum of its two largest choice values when a correction bias is given (DeepSeek-V3), else
///     its largest choice value (DeepSeek-V2); only the topk_groups best groups stay eligible;
///  4. the top_k eligible experts by choice value are selected, in descending order of choice;
///     ties (equal values) go to the LOWER expert id, which makes the result deterministic;
///     NaN counts as -inf;
///  5. weight = s[e] (without the bias); if renormalize, weights are divided by their sum;
///     finally multiplied by scaling_factor.
struct RouterParams {
  int32_t num_experts = 0;  // 1..kRouterMaxExperts
  int32_t top_k = 1;        // 1..min(num_experts, kRouterMaxTopK)
  RouterScoring scoring = RouterScoring::kSoftmax;
  bool renormalize = true;
  int32_t num_groups = 1;   // 1..32, divides num_experts
  int32_t topk_groups = 1;  // 1..num_groups; with num_groups == 1 it is ignored
  float scaling_factor = 1.0f;
};

inline constexpr int32_t kRouterMaxExperts = 2048;
inline constexpr int32_t kRouterMaxTopK = 32;

/// Top-k routing. logits [num_tokens, num_experts] row-major (fp32 or bf16, per `dtype`);
/// correction_bias: nullptr or fp32 [num_experts]. Writes topk_ids int32 [num_tokens, top_k] and
/// topk_weights fp32 [num_tokens, top_k]. Device pointers; enqueued on `stream`; no host sync.
/// Throws moebal::ValueError on an invalid configuration.
void router_topk(const void* logits, LogitsDtype dtype, int64_t num_tokens, const RouterParams& params,
                 const float* correction_bias, int32_t* topk_ids, float* topk_weights,
                 cudaStream_t stream);

/// Placement of one layer's logical experts onto physical slots, in DeepSeek EPLB's layout
/// (see moebal/core/placement.h): log2phy int32 [num_experts, max_copies] lists the slots of each
/// expert (padded with -1), logcnt int32 [num_experts] the number of copies. Device pointers.
/// A default-constructed view (log2phy == nullptr) is the identity: num_slots == num_experts and
/// slot e holds expert e.
struct PlacementView {
  const int32_t* log2phy = nullptr;
  const int32_t* logcnt = nullptr;
  int32_t max_copies = 0;
};

/// Bytes of device workspace dispatch_layout needs.
size_t dispatch_layout_workspace_bytes(int64_t num_tokens, int32_t top_k, int32_t num_slots);

/// Replica-aware dispatch layout of topk_ids int32 [num_tokens, top_k] (logical expert ids).
///  - replica choice: pair (t, j) routed to expert e goes to copy (t mod logcnt[e]) of e, i.e.
///    slot log2phy[e, t mod logcnt[e]] (round robin by token index, as EPLB does);
///  - ids outside [0, num_experts) (e.g. -1 padding) and slots outside [0, num_slots) are DROPPED:
///    slot_ids = -1, and their rows go after all valid rows (nothing is validated here: that would
///    need a host sync; the torch op's CPU path raises on them instead);
///  - the slot-sorted buffer has num_tokens * top_k rows: rows [offsets[s], offsets[s+1]) belong to
///    slot s, in (token, j) order (stable); rows [offsets[num_slots], num_tokens * top_k) hold the
///    dropped pairs, also in order.
/// Outputs (device, overwritten): slot_ids int32 [num_tokens, top_k]; offsets int32
/// [num_slots + 1] (the layout of grouped_gemm.h); row_index int32 [num_tokens, top_k], the row of
/// each pair (a permutation of [0, num_tokens * top_k)); sorted_token int32 [num_tokens * top_k],
/// the token of each row. Enqueued on `stream`; no host synchronisation; deterministic.
void dispatch_layout(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k, int32_t num_experts,
                     int32_t num_slots, const PlacementView& placement, int32_t* slot_ids,
                     int32_t* offsets, int32_t* row_index, int32_t* sorted_token, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream);

/// Most physical slots a dispatch layout supports (its per-warp slot histograms live in shared
/// memory).
inline constexpr int32_t kLayoutMaxSlots = 11 * 1024 - 1;

/// Bytes of device workspace route_and_layout needs (0 whenever it runs fused; the same as
/// dispatch_layout_workspace_bytes, which its two-kernel path uses).
size_t route_and_layout_workspace_bytes(int64_t num_tokens, int32_t top_k, int32_t num_slots);

/// How route_and_layout runs.
enum class RouteLayoutPath : int32_t {
  kAuto = 0,        // the fastest measured path for the size and device (see route_and_layout_plan)
  kTwoKernels = 1,  // router_topk then dispatch_layout (every size)
  kOneBlock = 2,    // one launch, one block: routing and layout in one SM
  kCluster = 3,     // one launch, one thread-block cluster (sm_90+): routing spread over up to
                    // kRouteLayoutMaxCluster SMs, layout in the cluster's first block
  kGrid = 4,        // one cooperative launch: routing spread over one block per 4 tokens (at most
                    // one per SM), a grid barrier, layout in the first block
};

inline constexpr int64_t kRouteLayoutMaxTokens = 256;   // fused paths: num_tokens <= this
inline constexpr int64_t kRouteLayoutMaxPairs = 4096;   // and num_tokens * top_k <= this
inline constexpr size_t kRouteLayoutMaxSmemBytes = 160 * 1024;  // and a block's shared memory
inline constexpr int kRouteLayoutMaxCluster = 8;        // blocks of the cluster path (portable size)

/// The path route_and_layout(..., path, ...) takes on the current device: `path` itself when it
/// can run the problem, kAuto resolved to a concrete path, or kTwoKernels when a fused path cannot
/// (num_tokens outside [1, kRouteLayoutMaxTokens], more than kRouteLayoutMaxPairs pairs, shared
/// memory over kRouteLayoutMaxSmemBytes, kCluster on a device without cluster launch, or kGrid on
/// a device without cooperative launch).
/// Host-only; cheap (one cached device-attribute query).
RouteLayoutPath route_and_layout_plan(int64_t num_tokens, const RouterParams& params, int32_t num_slots,
                                      RouteLayoutPath path = RouteLayoutPath::kAuto);

/// router_topk followed by dispatch_layout, for every size, with the outputs of both: the same
/// ids, bit-identical weights and the same layout as the two calls (the fused kernel inlines the
/// router's per-token routine and reproduces the layout's stable order). At decode sizes it is
/// one launch: warps route tokens (one block, a cluster of blocks whose first block gathers the
/// slots after a cluster barrier, or a cooperative grid whose first block gathers them after a
/// grid barrier), then one block sorts the (token, k) pairs by slot (stable
/// counting sort in shared memory). `path` (kAuto unless benchmarking) picks the path as
/// route_and_layout_plan resolves it; a forced path that cannot run the problem falls back to
/// kTwoKernels.
/// logits, correction_bias, placement: as router_topk / dispatch_layout (num_experts is
/// params.num_experts). Outputs (device, overwritten): topk_ids int32 / topk_weights fp32
/// [num_tokens, top_k]; slot_ids, offsets [num_slots + 1], row_index, sorted_token as
/// dispatch_layout. workspace: route_and_layout_workspace_bytes(...) bytes (may be null when 0).
/// Enqueued on `stream`; no host synchronisation (CUDA-graph capturable); deterministic.
/// Throws moebal::ValueError on an invalid configuration.
void route_and_layout(const void* logits, LogitsDtype dtype, int64_t num_tokens, const RouterParams& params,
                      const float* correction_bias, int32_t num_slots, const PlacementView& placement,
                      int32_t* topk_ids, float* topk_weights, int32_t* slot_ids, int32_t* offsets,
                      int32_t* row_index, int32_t* sorted_token, void* workspace, size_t workspace_bytes,
                      RouteLayoutPath path, cudaStream_t stream);

}  // namespace moebal::cuda
