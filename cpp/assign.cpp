#include "moebal/core/assign.h"

#include <vector>

#include "moebal/core/error.h"

namespace moebal::core {

AssignPolicy parse_assign_policy(const std::string& name) {
  for (AssignPolicy p : {AssignPolicy::kRoundRobin, AssignPolicy::kHash, AssignPolicy::kLocality,
                         AssignPolicy::kQuota, AssignPolicy::kWeightedLocality})
    if (name == assign_policy_name(p)) return p;
  MOEBAL_CHECK_ARG(false, "assign: unknown policy '", name,
                   "'; expected one of round_robin, hash, locality, quota, weighted_locality");
  return AssignPolicy::kRoundRobin;  // unreachable
}

const char* assign_policy_name(AssignPolicy p) {
  switch (p) {
    case AssignPolicy::kRoundRobin: return "round_robin";
    case AssignPolicy::kHash: return "hash";
    case AssignPolicy::kLocality: return "locality";
    case AssignPolicy::kQuota: return "quota";
    case AssignPolicy::kWeightedLocality: return "weighted_locality";
  }
  return "?";
}

ReplicaTable replica_table(const Placement& p, int32_t layer) {
  MOEBAL_CHECK_ARG(layer >= 0 && layer < p.num_layers, "assign: layer ", layer, " outside [0, ",
                   p.num_layers, ")");
  ReplicaTable t;
  t.log2phy = p.log2phy.data() + static_cast<size_t>(layer) * p.num_experts * p.max_copies;
  t.logcnt = p.logcnt.data() + static_cast<size_t>(layer) * p.num_experts;
  t.num_experts = p.num_experts;
  t.max_copies = p.max_copies;
  t.num_slots = p.num_slots;
  t.num_gpus = p.num_gpus;
  t.num_nodes = p.num_nodes;
  return t;
}

void validate_replica_table(const ReplicaTable& t) {
  check_layout(t.num_experts, t.num_slots, t.num_gpus, t.num_nodes);
  MOEBAL_CHECK_ARG(t.max_copies >= 1, "assign: max_copies must be >= 1, got ", t.max_copies);
  MOEBAL_CHECK_ARG(t.log2phy != nullptr && t.logcnt != nullptr, "assign: log2phy/logcnt missing");
  std::vector<char> seen(t.num_slots, 0);
  for (int32_t e = 0; e < t.num_experts; ++e) {
    const int32_t n = t.logcnt[e];
    MOEBAL_CHECK_ARG(n >= 1 && n <= t.max_copies, "assign: logcnt of expert ", e, " is ", n,
                     "; must be in [1, max_copies=", t.max_copies, "]");
    for (int32_t i = 0; i < n; ++i) {
      const int32_t s = t.log2phy[static_cast<size_t>(e) * t.max_copies + i];
      MOEBAL_CHECK_ARG(s >= 0 && s < t.num_slots, "assign: log2phy of expert ", e, ", copy ", i,
                       " names slot ", s, " outside [0, ", t.num_slots, ")");
      MOEBAL_CHECK_ARG(!seen[s], "assign: slot ", s, " is listed twice in log2phy");
      seen[s] = 1;
    }
  }
}

int64_t assign_num_classes(AssignPolicy p, int32_t E, int32_t G, int32_t N) {
  switch (p) {
    case AssignPolicy::kRoundRobin: return E;
    case AssignPolicy::kHash: return 0;
    case AssignPolicy::kQuota: return static_cast<int64_t>(G) * E;
    case AssignPolicy::kLocality:
    case AssignPolicy::kWeightedLocality: return static_cast<int64_t>(E) * (G + N + 1);
  }
  return 0;
}

void assign_replicas(const int32_t* ids, const int32_t* src, int64_t T, int32_t K, const ReplicaTable& t,
                     AssignPolicy policy, const int32_t* quota, const int32_t* w, int32_t* out) {
  MOEBAL_CHECK_ARG(T >= 0, "assign: num_tokens must be >= 0, got ", T);
  MOEBAL_CHECK_ARG(K >= 1, "assign: top_k must be >= 1, got ", K);
  validate_replica_table(t);
  const int32_t E = t.num_experts, G = t.num_gpus;
  if (policy == AssignPolicy::kQuota) {
    MOEBAL_CHECK_ARG(quota != nullptr, "assign: policy 'quota' needs a quota matrix [num_gpus, num_experts, num_gpus]");
    for (int32_t r = 0; r < G; ++r)
      for (int32_t e = 0; e < E; ++e)
        for (int32_t d = 0; d < G; ++d) {
          const int32_t q = quota[(static_cast<size_t>(r) * E + e) * G + d];
          MOEBAL_CHECK_ARG(q >= 0, "assign: quota[", r, ", ", e, ", ", d, "] is negative (", q, ")");
          MOEBAL_CHECK_ARG(q == 0 || assign_detail::copy_on_gpu(t, e, d) >= 0, "assign: quota[", r, ", ",
                           e, ", ", d, "] = ", q, " but GPU ", d, " holds no copy of expert ", e);
        }
  }
  if (policy == AssignPolicy::kWeightedLocality && w != nullptr)
    for (int32_t s = 0; s < t.num_slots; ++s)
      MOEBAL_CHECK_ARG(w[s] >= 1 && w[s] <= kMaxSlotWeight, "assign: slot_weights[", s, "] = ", w[s],
                       " outside [1, ", kMaxSlotWeight, "]");
  for (int64_t i = 0; i < T; ++i)
    MOEBAL_CHECK_ARG(src[i] >= 0 && src[i] < G, "assign: src_rank of token ", i, " is ", src[i],
                     "; must be a GPU id in [0, ", G, ")");
  for (int64_t i = 0; i < T * K; ++i)
    MOEBAL_CHECK_ARG(ids[i] < E, "assign: topk_ids of token ", i / K, ", k=", i % K, " is ", ids[i],
                     ", >= num_experts (", E, ")");

  std::vector<int64_t> counter(static_cast<size_t>(assign_num_classes(policy, E, G, t.num_nodes)), 0);
  // The tier of (expert, GPU) depends on the table only: tabulate it once.
  const bool tiered = assign_detail::uses_tier(policy);
  std::vector<assign_detail::Tier> tiers(tiered ? static_cast<size_t>(E) * G : 0);
  for (int32_t e = 0; tiered && e < E; ++e)
    for (int32_t g = 0; g < G; ++g) tiers[static_cast<size_t>(e) * G + g] = assign_detail::locality_tier(t, e, g);
  const assign_detail::Tier none{0, 0, 0};
  for (int64_t i = 0; i < T * K; ++i) {
    const int32_t e = ids[i];
    if (e < 0) {
      out[i] = -1;
      continue;
    }
    const int64_t tok = i / K;
    const int32_t g = src[tok];
    const assign_detail::Tier& tr = tiered ? tiers[static_cast<size_t>(e) * G + g] : none;
    int64_t rank = 0;
    if (policy != AssignPolicy::kHash) rank = counter[assign_detail::class_of(policy, t, e, g, tr)]++;
    out[i] = assign_detail::choose_slot(policy, t, e, g, tok, rank, quota, w, tr);
    MOEBAL_CHECK(out[i] >= 0 && out[i] < t.num_slots, "no slot chosen for expert ", e);
  }
}

}  // namespace moebal::core
