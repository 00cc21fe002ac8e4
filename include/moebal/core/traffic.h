// All-to-all bytes implied by a token -> slot assignment, split intra-node / cross-node.
#pragma once

#include <cstdint>
#include <vector>

#include "moebal/core/assign.h"
#include "moebal/core/placement.h"
#include "moebal/core/trace.h"

namespace moebal::core {

/// Bytes one MoE layer moves through the all-to-all, dispatch plus combine (the combine returns one
/// row per row dispatched, so it mirrors the dispatch; partial sums are reduced where the hierarchy
/// fans in, so it also mirrors it under the hierarchical scheme). Rows that stay on the token's GPU
/// cost nothing. Three schemes:
///  - pairs: one row per (token, k) whose slot is on another GPU (permute + plain all-to-all);
///  - flat: one row per (token, destination GPU), deduplicated as DeepEP-style dispatch does;
///  - hier: GRACE's hierarchical sparse all-to-all: a token crosses to each remote destination
///    node once, to the GPU with its own local rank there (the peer), which fans it out over
///    NVLink to the other GPUs of that node that need it; same-node destinations get it directly.
struct A2ABytes {
  int64_t pairs_intra = 0, pairs_cross = 0;
  int64_t flat_intra = 0, flat_cross = 0;
  int64_t hier_intra = 0, hier_cross = 0;
};

/// slots [num_tokens, top_k] from assign_replicas (-1 entries are skipped); src_rank [num_tokens].
/// Throws ValueError on slots >= num_slots, ranks outside [0, num_gpus), token_bytes <= 0, or a
/// layout that check_layout rejects.
A2ABytes a2a_bytes(const int32_t* slots, const int32_t* src_rank, int64_t num_tokens, int32_t top_k,
                   int32_t num_slots, int32_t num_gpus, int32_t num_nodes, int64_t token_bytes);

/// Rows each GPU receives (computes) from an assignment: [num_gpus].
std::vector<double> assigned_gpu_tokens(const int32_t* slots, int64_t num_entries, int32_t num_slots,
                                        int32_t num_gpus);

/// GRACE routing weights per slot, [num_layers, num_slots]: proportional to 1 / predicted load of
/// the slot's GPU (each expert's load split evenly over its copies, as gpu_loads does), scaled so
/// the least-loaded GPU's slots weigh 1024, clamped to [1, 1024]. GPUs with no load weigh 1024.
std::vector<int32_t> load_slot_weights(const LoadMatrix& loads, const Placement& placement);

struct LayerTraffic {
  A2ABytes bytes;
  std::vector<double> gpu_tokens;  ///< rows computed per GPU after assignment [num_gpus]
  double imbalance = 1.0;          ///< max / mean of gpu_tokens
};

/// Assigns every layer of a trace to `placement` with `policy` and counts the traffic. The trace's
/// src_rank is the token's GPU (must be < num_gpus; no ranks = GPU 0). slot_weights [L, S] are used
/// by weighted_locality; empty = load_slot_weights(trace.loads(), placement). The quota policy needs
/// per-layer quotas and is not accepted here.
std::vector<LayerTraffic> trace_traffic(const RoutingTrace& trace, const Placement& placement,
                                        AssignPolicy policy, int64_t token_bytes,
                                        const std::vector<int32_t>& slot_weights = {});

}  // namespace moebal::core
