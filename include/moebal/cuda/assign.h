// Token -> replica assignment on the GPU: the same rules as moebal::core::assign_replicas
// (moebal/core/assign.h), identical results on valid input.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "moebal/core/assign.h"

namespace moebal::cuda {

/// Device workspace assign_replicas needs for num_tokens x top_k entries (0 for hash). Host-only
/// computation (no device work, no synchronisation), safe during stream capture.
size_t assign_replicas_workspace_bytes(int64_t num_tokens, int32_t top_k, int32_t num_experts, int32_t num_gpus,
                                       int32_t num_nodes, core::AssignPolicy policy);

/// Picks the slot of every (token, k). All pointers are device memory: topk_ids [num_tokens, top_k],
/// src_rank [num_tokens], table.log2phy/logcnt (one layer), quota [num_gpus, num_experts, num_gpus]
/// (quota policy only), slot_weights [num_slots] (weighted_locality only; null = all 1),
/// out_slots [num_tokens, top_k], workspace (>= assign_replicas_workspace_bytes, 256-byte aligned).
///
/// Ranks within a class come from per-block class counts + a scan over blocks + an in-order walk of
/// each block's chunk (up to 2048 classes), or else from a stable CUB radix sort of the class keys;
/// either way they equal the CPU reference's token-order counters. Enqueued on `stream`; no host synchronisation, no
/// allocation: capturable in a CUDA graph. Values are not validated (that would need a host sync):
/// negative ids, ids >= num_experts, ranks outside [0, num_gpus) or a table without a copy give
/// slot -1; quota entries that are negative or name a GPU without a copy count as zero; weights are
/// clamped to [1, kMaxSlotWeight]. The CPU reference rejects all of these instead.
/// Host-side argument errors (sizes, null pointers, small workspace) throw moebal::ValueError.
void assign_replicas(const int32_t* topk_ids, const int32_t* src_rank, int64_t num_tokens, int32_t top_k,
                     const core::ReplicaTable& table, core::AssignPolicy policy, const int32_t* quota,
                     const int32_t* slot_weights, int32_t* out_slots, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

}  // namespace moebal::cuda
