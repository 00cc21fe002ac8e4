// Token -> replica assignment: for every (token, k) pick the physical slot that serves it.
//
// The choice rules live here as small inline functions compiled for host and device, so the CPU
// reference (assign_replicas below) and the CUDA kernel (moebal/cuda/assign.h) share one definition
// and give identical results on valid input.
//
// Parallel-friendly determinism. Every rule is a pure function of (expert, source GPU, token index,
// rank), where `rank` is the position of the (token, k) among the earlier (token, k) of the same
// *class* in flat token order t * top_k + k. Classes per policy:
//   round_robin          class = expert                          -> copy rank % copies
//   hash                 (no class)                              -> copy mix32(token, expert) % copies
//   locality             class = (expert, tier, where)           -> tier candidate rank % candidates
//   weighted_locality    class = (expert, tier, where)           -> weighted pick, Weyl sequence of rank
//   quota                class = (source GPU, expert)            -> dst where quota prefix > rank, then
//                                                                   locality on (rank - quota total)
// Tiers: 0 = copies on the token's own GPU (where = GPU), 1 = copies on its node (where = node),
// 2 = all copies (remote; one class for every source). The CPU computes ranks with one counter per
// class; the GPU with a stable radix sort by class (rank = sorted position - first position of the
// class), so both count the same thing.
#pragma once

#include <cstdint>
#include <string>

#include "moebal/core/placement.h"

#if defined(__CUDACC__)
#define MOEBAL_HD __host__ __device__ __forceinline__
#else
#define MOEBAL_HD inline
#endif

namespace moebal::core {

/// How a (token, k) picks among the copies of its expert.
enum class AssignPolicy : int32_t {
  kRoundRobin = 0,        ///< EPLB-style: copies in turn, per expert in token order (balance +-1)
  kHash = 1,              ///< EPLB-style stateless: copy chosen by a hash of (token index, expert)
  kLocality = 2,          ///< same GPU, else same node, else any; round-robin within the tier
  kQuota = 3,             ///< PROBE: consume quota[src, expert, dst] in token order, then locality
  kWeightedLocality = 4,  ///< GRACE TAR: tiers as locality, weighted by slot weight within the tier
};

/// Parses "round_robin", "hash", "locality", "quota", "weighted_locality"; throws ValueError.
AssignPolicy parse_assign_policy(const std::string& name);
const char* assign_policy_name(AssignPolicy policy);

/// One layer of a placement as the assignment reads it (pointers to host or device memory, not
/// owned). log2phy [num_experts, max_copies]: slots of each expert (the first logcnt[e] entries are
/// used); logcnt [num_experts]. Slot s lives on GPU s / (num_slots / num_gpus).
struct ReplicaTable {
  const int32_t* log2phy = nullptr;
  const int32_t* logcnt = nullptr;
  int32_t num_experts = 0;
  int32_t max_copies = 0;
  int32_t num_slots = 0;
  int32_t num_gpus = 0;
  int32_t num_nodes = 0;

  MOEBAL_HD int32_t slots_per_gpu() const { return num_slots / num_gpus; }
  MOEBAL_HD int32_t gpus_per_node() const { return num_gpus / num_nodes; }
};

/// Host view of one layer of a Placement (valid while `p` lives).
ReplicaTable replica_table(const Placement& p, int32_t layer);

/// Throws ValueError unless the (host) table is consistent: layout divisible, counts in
/// [1, max_copies], listed slots in range and never listed twice.
void validate_replica_table(const ReplicaTable& table);

/// Largest slot weight accepted by weighted_locality (weights are integers in [1, kMaxSlotWeight]).
constexpr int32_t kMaxSlotWeight = 1 << 20;

/// Number of rank classes of a policy (0 for hash).
int64_t assign_num_classes(AssignPolicy policy, int32_t num_experts, int32_t num_gpus, int32_t num_nodes);

/// CPU reference. topk_ids [num_tokens, top_k] (negative = padding -> slot -1), src_rank
/// [num_tokens] (GPU the token lives on), quota [num_gpus, num_experts, num_gpus] int32 counts (quota
/// policy only, else null), slot_weights [num_slots] in [1, kMaxSlotWeight] (weighted_locality only;
/// null = all 1). Writes out_slots [num_tokens, top_k]. Throws ValueError on ids >= num_experts,
/// ranks outside [0, num_gpus), a bad table, missing/negative quota, quota for a GPU without a copy
/// of the expert, or weights out of range.
void assign_replicas(const int32_t* topk_ids, const int32_t* src_rank, int64_t num_tokens, int32_t top_k,
                     const ReplicaTable& table, AssignPolicy policy, const int32_t* quota,
                     const int32_t* slot_weights, int32_t* out_slots);

namespace assign_detail {

/// murmur3's 32-bit finaliser: a cheap, well-mixed integer hash.
MOEBAL_HD uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

MOEBAL_HD int32_t copies(const ReplicaTable& t, int32_t e) {
  const int32_t c = t.logcnt[e];
  return c < 0 ? 0 : (c > t.max_copies ? t.max_copies : c);
}

MOEBAL_HD int32_t copy_slot(const ReplicaTable& t, int32_t e, int32_t i) {
  return t.log2phy[static_cast<int64_t>(e) * t.max_copies + i];
}

/// Locality tier of expert e seen from GPU g: 0 (a copy on g), 1 (a copy on g's node) or 2.
/// `num_candidates` = copies in that tier; `key` = the class-key offset (g, G + node, or G + N).
struct Tier {
  int32_t tier;
  int32_t num_candidates;
  int32_t key;
};

MOEBAL_HD Tier locality_tier(const ReplicaTable& t, int32_t e, int32_t g) {
  const int32_t spg = t.slots_per_gpu(), gpn = t.gpus_per_node(), n = copies(t, e);
  const int32_t node = g / gpn;
  int32_t on_gpu = 0, on_node = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t gpu = copy_slot(t, e, i) / spg;
    on_gpu += gpu == g;
    on_node += gpu / gpn == node;
  }
  if (on_gpu > 0) return Tier{0, on_gpu, g};
  if (on_node > 0) return Tier{1, on_node, t.num_gpus + node};
  return Tier{2, n, t.num_gpus + t.num_nodes};
}

MOEBAL_HD bool in_tier(const ReplicaTable& t, int32_t slot, int32_t tier, int32_t g) {
  const int32_t gpu = slot / t.slots_per_gpu();
  if (tier == 0) return gpu == g;
  if (tier == 1) return gpu / t.gpus_per_node() == g / t.gpus_per_node();
  return true;
}

/// idx-th copy (ascending slot order) of expert e that belongs to the tier.
MOEBAL_HD int32_t tier_candidate(const ReplicaTable& t, int32_t e, int32_t g, int32_t tier, int32_t idx) {
  const int32_t n = copies(t, e);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t s = copy_slot(t, e, i);
    if (in_tier(t, s, tier, g) && idx-- == 0) return s;
  }
  return -1;
}

/// Weighted choice among the tier's copies for the rank-th member of its class: the Weyl sequence
/// frac(rank * golden ratio) (32-bit fixed point) is mapped through the cumulative integer weights,
/// so after n tokens every copy has n * w / W tokens up to O(log n), deterministically.
MOEBAL_HD int32_t weighted_candidate(const ReplicaTable& t, int32_t e, int32_t g, int32_t tier,
                                     int64_t rank, const int32_t* w) {
  const int32_t n = copies(t, e);
  uint64_t total = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t s = copy_slot(t, e, i);
    if (!in_tier(t, s, tier, g)) continue;
    int32_t wi = w ? w[s] : 1;
    wi = wi < 1 ? 1 : (wi > kMaxSlotWeight ? kMaxSlotWeight : wi);
    total += static_cast<uint64_t>(wi);
  }
  const uint32_t u = static_cast<uint32_t>(static_cast<uint64_t>(rank) * 2654435769ull);
  uint64_t target = (static_cast<uint64_t>(u) * total) >> 32;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t s = copy_slot(t, e, i);
    if (!in_tier(t, s, tier, g)) continue;
    int32_t wi = w ? w[s] : 1;
    wi = wi < 1 ? 1 : (wi > kMaxSlotWeight ? kMaxSlotWeight : wi);
    if (target < static_cast<uint64_t>(wi)) return s;
    target -= static_cast<uint64_t>(wi);
  }
  return -1;
}

/// First copy of expert e on GPU d, or -1.
MOEBAL_HD int32_t copy_on_gpu(const ReplicaTable& t, int32_t e, int32_t d) {
  const int32_t n = copies(t, e), spg = t.slots_per_gpu();
  for (int32_t i = 0; i < n; ++i) {
    const int32_t s = copy_slot(t, e, i);
    if (s / spg == d) return s;
  }
  return -1;
}

/// Whether the policy looks at locality tiers (then callers pass locality_tier(t, e, g) below).
MOEBAL_HD bool uses_tier(AssignPolicy p) {
  return p == AssignPolicy::kLocality || p == AssignPolicy::kWeightedLocality || p == AssignPolicy::kQuota;
}

/// Rank class of a valid (expert e, source GPU g) entry, in [0, assign_num_classes()); tr is
/// locality_tier(t, e, g) when uses_tier(p), else ignored.
MOEBAL_HD int64_t class_of(AssignPolicy p, const ReplicaTable& t, int32_t e, int32_t g, const Tier& tr) {
  switch (p) {
    case AssignPolicy::kRoundRobin:
      return e;
    case AssignPolicy::kQuota:
      return static_cast<int64_t>(g) * t.num_experts + e;
    case AssignPolicy::kLocality:
    case AssignPolicy::kWeightedLocality:
      return static_cast<int64_t>(e) * (t.num_gpus + t.num_nodes + 1) + tr.key;
    default:
      return 0;
  }
}

/// The slot for the (token, expert e from GPU g) entry that is the rank-th of its class; tr as for
/// class_of. quota is [G, E, G]; entries for a GPU without a copy of e count as zero and negative
/// entries as zero (the CPU reference rejects both up front). Returns -1 if the table gives no copy.
MOEBAL_HD int32_t choose_slot(AssignPolicy p, const ReplicaTable& t, int32_t e, int32_t g, int64_t token,
                              int64_t rank, const int32_t* quota, const int32_t* w, const Tier& tr) {
  const int32_t n = copies(t, e);
  if (n <= 0) return -1;
  switch (p) {
    case AssignPolicy::kRoundRobin:
      return copy_slot(t, e, static_cast<int32_t>(rank % n));
    case AssignPolicy::kHash:
      return copy_slot(t, e, static_cast<int32_t>(
                                 mix32(static_cast<uint32_t>(token) * 0x9E3779B1u + static_cast<uint32_t>(e)) %
                                 static_cast<uint32_t>(n)));
    case AssignPolicy::kLocality:
      return tier_candidate(t, e, g, tr.tier, static_cast<int32_t>(rank % tr.num_candidates));
    case AssignPolicy::kWeightedLocality:
      return weighted_candidate(t, e, g, tr.tier, rank, w);
    case AssignPolicy::kQuota: {
      const int32_t G = t.num_gpus;
      const int32_t* row = quota + (static_cast<int64_t>(g) * t.num_experts + e) * G;
      int64_t acc = 0;
      // Own GPU first, so a short batch uses the local quota before any remote one.
      for (int32_t j = -1; j < G; ++j) {
        const int32_t d = j < 0 ? g : j;
        if (j == g) continue;
        const int32_t q = row[d];
        if (q <= 0) continue;
        const int32_t s = copy_on_gpu(t, e, d);
        if (s < 0) continue;
        if (rank < acc + q) return s;
        acc += q;
      }
      return tier_candidate(t, e, g, tr.tier, static_cast<int32_t>((rank - acc) % tr.num_candidates));
    }
  }
  return -1;
}

}  // namespace assign_detail
}  // namespace moebal::core
