#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>

#include "assign_test_util.h"
#include "moebal/core/assign.h"
#include "moebal/core/error.h"
#include "moebal/core/traffic.h"
#include "test_util.h"

using namespace moebal::core;
using moebal::test::AssignCase;


namespace {

constexpr AssignPolicy kAll[] = {AssignPolicy::kRoundRobin, AssignPolicy::kHash, AssignPolicy::kLocality,
                                 AssignPolicy::kQuota, AssignPolicy::kWeightedLocality};

std::vector<int32_t> run(const AssignCase& c, AssignPolicy p) {
  std::vector<int32_t> out(c.ids.size(), -7);
  assign_replicas(c.ids.data(), c.src.data(), c.num_tokens, c.top_k, replica_table(c.placement, 0), p,
                  c.quota.data(), c.weights.data(), out.data());
  return out;
}

// Invariants every policy must satisfy, checked on one case.
void check_invariants(const AssignCase& c, AssignPolicy p, const std::vector<int32_t>& out) {
  const Placement& pl = c.placement;
  const int32_t K = c.top_k, E = pl.num_experts, G = pl.num_gpus;
  std::vector<int64_t> per_expert(E, 0), per_slot_expert(E, 0);
  for (int64_t i = 0; i < c.num_tokens * K; ++i) {
    const int32_t e = c.ids[i], s = out[i];
    if (e < 0) {
      ASSERT_EQ(s, -1) << "padding must map to -1";
      continue;
    }
    ASSERT_GE(s, 0);
    ASSERT_LT(s, pl.num_slots);
    ASSERT_EQ(pl.expert_of(0, s), e) << "slot " << s << " does not hold expert " << e << " (" << assign_policy_name(p) << ")";
    ++per_expert[e];
    ++per_slot_expert[pl.expert_of(0, s)];
    const int32_t g = c.src[i / K], d = pl.gpu_of_slot(s);
    if (p == AssignPolicy::kLocality || p == AssignPolicy::kWeightedLocality) {
      bool local = false, node = false;
      for (int32_t j = 0; j < pl.copies(0, e); ++j) {
        const int32_t gj = pl.gpu_of_slot(pl.slot_of(0, e, j));
        local |= gj == g;
        node |= pl.node_of_gpu(gj) == pl.node_of_gpu(g);
      }
      if (local) {
        ASSERT_EQ(d, g) << "a copy on the token's GPU exists but was not used";
      } else if (node) {
        ASSERT_EQ(pl.node_of_gpu(d), pl.node_of_gpu(g)) << "a same-node copy exists but was not used";
      }
    }
  }
  EXPECT_EQ(per_expert, per_slot_expert);  // loads are conserved
  const std::vector<double> gt = assigned_gpu_tokens(out.data(), static_cast<int64_t>(out.size()), pl.num_slots, G);
  double total = 0;
  for (double v : gt) total += v;
  int64_t valid = 0;
  for (int64_t v : per_expert) valid += v;
  EXPECT_EQ(total, static_cast<double>(valid));
  if (p == AssignPolicy::kRoundRobin) {  // balance within +-1 per expert
    std::vector<int64_t> per_slot(pl.num_slots, 0);
    for (int32_t s : out)
      if (s >= 0) ++per_slot[s];
    for (int32_t e = 0; e < E; ++e) {
      int64_t lo = INT64_MAX, hi = 0;
      for (int32_t j = 0; j < pl.copies(0, e); ++j) {
        lo = std::min(lo, per_slot[pl.slot_of(0, e, j)]);
        hi = std::max(hi, per_slot[pl.slot_of(0, e, j)]);
      }
      EXPECT_LE(hi - lo, 1) << "expert " << e;
    }
  }
  if (p == AssignPolicy::kQuota) {
    // Per (source, expert): if demand <= quota total, no destination exceeds its quota; otherwise
    // every quota is used in full and the rest went by locality.
    std::map<std::tuple<int, int, int>, int64_t> got;
    std::vector<int64_t> demand(static_cast<size_t>(G) * E, 0);
    for (int64_t i = 0; i < c.num_tokens * K; ++i)
      if (c.ids[i] >= 0) {
        ++got[{c.src[i / K], c.ids[i], pl.gpu_of_slot(out[i])}];
        ++demand[static_cast<size_t>(c.src[i / K]) * E + c.ids[i]];
      }
    for (int32_t r = 0; r < G; ++r)
      for (int32_t e = 0; e < E; ++e) {
        int64_t qsum = 0;
        for (int32_t d = 0; d < G; ++d) qsum += c.quota[(static_cast<size_t>(r) * E + e) * G + d];
        const int64_t dem = demand[static_cast<size_t>(r) * E + e];
        for (int32_t d = 0; d < G; ++d) {
          const int64_t q = c.quota[(static_cast<size_t>(r) * E + e) * G + d];
          const int64_t n = got.count({r, e, d}) ? got[{r, e, d}] : 0;
          if (dem <= qsum) {
            ASSERT_LE(n, q) << "quota exceeded at [" << r << "," << e << "," << d << "]";
          } else {
            ASSERT_GE(n, q) << "quota left unused at [" << r << "," << e << "," << d << "]";
          }
        }
      }
  }
}

}  // namespace

TEST(AssignReplicas, PropertiesOnThousandsOfRandomCases) {
  std::mt19937_64 rng(12345);
  for (int it = 0; it < 3000; ++it) {
    const int32_t N = moebal::test::uniform_int(rng, 1, 3);
    const int32_t G = N * moebal::test::uniform_int(rng, 1, 4);
    const int32_t E = moebal::test::uniform_int(rng, 1, 24);
    const int32_t spg = (E + G - 1) / G + moebal::test::uniform_int(rng, 0, 3);
    const int64_t T = moebal::test::uniform_int(rng, 0, 60);
    const int32_t K = moebal::test::uniform_int(rng, 1, 4);
    const AssignCase c = moebal::test::random_case(rng, T, K, E, G, N, spg, 1.0 + 3.0 * (it % 3));
    for (AssignPolicy p : kAll) {
      const std::vector<int32_t> out = run(c, p);
      ASSERT_NO_FATAL_FAILURE(check_invariants(c, p, out)) << "case " << it << " policy " << assign_policy_name(p);
      ASSERT_EQ(out, run(c, p)) << "not deterministic";
    }
  }
}

TEST(AssignReplicas, QuotaMatchingDemandIsUsedExactly) {
  // Two GPUs each holding expert 0; quota from rank 0: 3 tokens local, 2 to GPU 1.
  const Placement p = Placement::from_phy2log(1, 2, 4, 2, 1, {0, 1, 0, 1});
  std::vector<int32_t> ids(5, 0), src(5, 0), quota(2 * 2 * 2, 0), out(5);
  quota[(0 * 2 + 0) * 2 + 0] = 3;
  quota[(0 * 2 + 0) * 2 + 1] = 2;
  assign_replicas(ids.data(), src.data(), 5, 1, replica_table(p, 0), AssignPolicy::kQuota, quota.data(), nullptr, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{0, 0, 0, 2, 2}));
  // Over demand: the sixth token falls back to locality (its own GPU).
  ids.push_back(0);
  src.push_back(0);
  out.resize(6);
  assign_replicas(ids.data(), src.data(), 6, 1, replica_table(p, 0), AssignPolicy::kQuota, quota.data(), nullptr, out.data());
  EXPECT_EQ(out.back(), 0);
}

TEST(AssignReplicas, WeightedLocalityFollowsWeights) {
  // Expert 0 on GPU 1 and GPU 2 (node 1 of 2); tokens on GPU 0 (node 0) go remote, weights 3:1.
  const Placement p = Placement::from_phy2log(1, 3, 4, 4, 2, {1, 0, 0, 2});
  // slots: 0 (GPU 0) = expert 1, 1 (GPU 1) = 0, 2 (GPU 2) = 0, 3 (GPU 3) = 2. Tokens on GPU 3 (node 1)
  // see expert 0 on GPU 2 (same node) -> tier 1 only slot 2; tokens on GPU 0 see tier 1 slot 1.
  const int T = 4000;
  std::vector<int32_t> ids(T, 0), src(T, 0), out(T), w = {1, 3, 1, 1};
  // From GPU 0 the only node-local copy is slot 1: tier 1 wins over weights.
  assign_replicas(ids.data(), src.data(), T, 1, replica_table(p, 0), AssignPolicy::kWeightedLocality, nullptr, w.data(), out.data());
  for (int32_t s : out) ASSERT_EQ(s, 1);
  // Four GPUs on four nodes: every copy is remote from GPU 0; weights 3 (slot 1) : 1 (slot 2).
  const Placement q = Placement::from_phy2log(1, 3, 4, 4, 4, {1, 0, 0, 2});
  assign_replicas(ids.data(), src.data(), T, 1, replica_table(q, 0), AssignPolicy::kWeightedLocality, nullptr, w.data(), out.data());
  int n1 = 0;
  for (int32_t s : out) n1 += s == 1;
  EXPECT_NEAR(n1, 3000, 10);  // Weyl sequence: error O(log T)
  // A prefix is balanced too, not just the total.
  int n1_prefix = 0;
  for (int i = 0; i < 40; ++i) n1_prefix += out[i] == 1;
  EXPECT_NEAR(n1_prefix, 30, 2);
}

TEST(AssignReplicas, RejectsBadInput) {
  const Placement p = Placement::from_phy2log(1, 2, 4, 2, 1, {0, 1, 0, 1});
  const ReplicaTable t = replica_table(p, 0);
  std::vector<int32_t> ids = {0, 1, 1, 0}, src = {0, 1}, out(4), quota(8, 0), w(4, 1);
  EXPECT_VALUE_ERROR(assign_replicas(std::vector<int32_t>{0, 2, 1, 0}.data(), src.data(), 2, 2, t, AssignPolicy::kLocality, nullptr, nullptr, out.data()),
                     ">= num_experts");
  EXPECT_VALUE_ERROR(assign_replicas(ids.data(), std::vector<int32_t>{0, 2}.data(), 2, 2, t, AssignPolicy::kLocality, nullptr, nullptr, out.data()),
                     "src_rank of token 1 is 2");
  EXPECT_VALUE_ERROR(assign_replicas(ids.data(), src.data(), 2, 2, t, AssignPolicy::kQuota, nullptr, nullptr, out.data()),
                     "needs a quota");
  quota[(1 * 2 + 1) * 2 + 0] = -1;
  EXPECT_VALUE_ERROR(assign_replicas(ids.data(), src.data(), 2, 2, t, AssignPolicy::kQuota, quota.data(), nullptr, out.data()),
                     "quota[1, 1, 0] is negative");
  const Placement single = Placement::from_phy2log(1, 2, 2, 2, 1, {0, 1});
  std::vector<int32_t> q2(8, 0);
  q2[(0 * 2 + 0) * 2 + 1] = 1;  // expert 0 has no copy on GPU 1
  EXPECT_VALUE_ERROR(assign_replicas(ids.data(), src.data(), 2, 2, replica_table(single, 0), AssignPolicy::kQuota, q2.data(), nullptr, out.data()),
                     "holds no copy of expert 0");
  w[2] = 0;
  EXPECT_VALUE_ERROR(assign_replicas(ids.data(), src.data(), 2, 2, t, AssignPolicy::kWeightedLocality, nullptr, w.data(), out.data()),
                     "slot_weights[2]");
  EXPECT_VALUE_ERROR(assign_replicas(ids.data(), src.data(), 2, 0, t, AssignPolicy::kHash, nullptr, nullptr, out.data()), "top_k");
  ReplicaTable bad = t;
  std::vector<int32_t> cnt = {3, 2};
  bad.logcnt = cnt.data();
  EXPECT_VALUE_ERROR(assign_replicas(ids.data(), src.data(), 2, 2, bad, AssignPolicy::kHash, nullptr, nullptr, out.data()),
                     "logcnt of expert 0");
  EXPECT_VALUE_ERROR(parse_assign_policy("nearest"), "unknown policy 'nearest'");
  EXPECT_EQ(parse_assign_policy("weighted_locality"), AssignPolicy::kWeightedLocality);
  EXPECT_VALUE_ERROR(replica_table(p, 1), "layer 1");
}

TEST(A2ABytes, HandCountedExample) {
  // 4 GPUs on 2 nodes, one slot each. Token 0 on GPU 0 -> slots {1, 2, 3}; token 1 on GPU 3 -> {3, 0}.
  const std::vector<int32_t> slots = {1, 2, 3, 3, 0, -1}, src = {0, 3};
  const A2ABytes b = a2a_bytes(slots.data(), src.data(), 2, 3, 4, 4, 2, 10);
  // pairs / flat: token 0: GPU1 intra, GPU2 + GPU3 cross; token 1: GPU3 local, GPU0 cross.
  EXPECT_EQ(b.pairs_intra, 2 * 10 * 1);
  EXPECT_EQ(b.pairs_cross, 2 * 10 * 3);
  EXPECT_EQ(b.flat_intra, b.pairs_intra);
  EXPECT_EQ(b.flat_cross, b.pairs_cross);
  // hier: token 0 crosses once to node 1 (peer = GPU 2, local rank 0), peer forwards to GPU 3;
  // token 1 crosses once to node 0 (peer = GPU 1, local rank 1), which forwards to GPU 0.
  EXPECT_EQ(b.hier_cross, 2 * 10 * 2);
  EXPECT_EQ(b.hier_intra, 2 * 10 * (1 + 1 + 1));
  // Dedup: two experts of one token on the same GPU travel once in flat, twice in pairs.
  const std::vector<int32_t> dup = {1, 1};
  const A2ABytes d = a2a_bytes(dup.data(), src.data(), 1, 2, 4, 4, 2, 1);
  EXPECT_EQ(d.pairs_intra, 4);
  EXPECT_EQ(d.flat_intra, 2);
  EXPECT_VALUE_ERROR(a2a_bytes(slots.data(), std::vector<int32_t>{0, 4}.data(), 2, 3, 4, 4, 2, 10), "src_rank of token 1");
  EXPECT_VALUE_ERROR(a2a_bytes(std::vector<int32_t>{9}.data(), src.data(), 1, 1, 4, 4, 2, 10), ">= num_slots");
  EXPECT_VALUE_ERROR(a2a_bytes(slots.data(), src.data(), 2, 3, 4, 4, 2, 0), "token_bytes");
}

TEST(A2ABytes, HierarchicalNeverCrossesMoreThanFlat) {
  std::mt19937_64 rng(7);
  for (int it = 0; it < 500; ++it) {
    const int32_t N = moebal::test::uniform_int(rng, 1, 4), G = N * moebal::test::uniform_int(rng, 1, 4);
    const int32_t E = moebal::test::uniform_int(rng, 2, 32);
    const AssignCase c = moebal::test::random_case(rng, 50, 4, E, G, N, (E + G - 1) / G + 1);
    const auto out = run(c, AssignPolicy::kLocality);
    const A2ABytes b = a2a_bytes(out.data(), c.src.data(), c.num_tokens, c.top_k, c.placement.num_slots, G, N, 7);
    ASSERT_LE(b.hier_cross, b.flat_cross);
    ASSERT_LE(b.flat_cross, b.pairs_cross);
    ASSERT_LE(b.flat_intra, b.pairs_intra);
    // Every destination the flat scheme serves is still served: the hierarchy moves at least as
    // many rows in total (cross + intra).
    ASSERT_GE(b.hier_cross + b.hier_intra, b.flat_intra + b.flat_cross);
    if (N == 1) {
      ASSERT_EQ(b.hier_intra, b.flat_intra);
    }
  }
}
