#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "moebal/core/error.h"
#include "moebal/core/probe.h"
#include "moebal/core/probe_detail.h"
#include "probe_cases.h"

namespace moebal::core::detail {
void probe_plan_impl(const ProbeConfig& cfg, int32_t num_layers, const ProbeInputs& in, const ProbeOutputs& out,
                     void* workspace, size_t workspace_bytes, bool exhaustive, bool portable);
bool probe_avx2_kernels();
}  // namespace moebal::core::detail

namespace {

using moebal::core::ProbeConfig;
using moebal_test::ProbeCase;
using moebal_test::ProbePlanOut;

ProbePlanOut run_cpu(const ProbeCase& c, bool exhaustive = false, bool portable = false) {
  ProbePlanOut o(c);
  std::vector<unsigned char> ws(moebal::core::probe_workspace_bytes(c.cfg));
  moebal::core::detail::probe_plan_impl(c.cfg, c.L, c.inputs(), o.outputs(), ws.data(), ws.size(), exhaustive,
                                        portable);
  return o;
}

// Two ranks, expert 0 on rank 0 and expert 1 on rank 1; both sources send 100 tokens to expert 0.
ProbeCase two_rank_case(double window_us, int S) {
  ProbeCase c;
  c.cfg.num_ranks = 2;
  c.cfg.num_experts = 2;
  c.cfg.num_slots = 2;
  c.cfg.max_extra_slots = S;
  c.cfg.expert_bytes = 45'000'000;  // 100 us over 450 GB/s
  c.cfg.intra_node_GBps = 450.0;
  c.counts = {100, 0, 100, 0};
  c.phy2log = {0, 1};
  c.fixed_us = {0.0, 0.0};
  c.us_per_token = {1.0, 1.0};
  c.window_us = {window_us, window_us};
  return c;
}

TEST(ProbePlan, HandWorkedTwoRanks) {
  const ProbeCase c = two_rank_case(100.0, 3);  // the transfer takes exactly the window
  const ProbePlanOut o = run_cpu(c);
  // Water-filling: rank 1 gets a replica of expert 0 from rank 0 and takes rank 1's own 100 tokens
  // (they become local); rank 0 keeps its own (pinned). 200 us -> 100 us on both.
  EXPECT_EQ(o.quota, (std::vector<int32_t>{100, 0, 0, 0, /*src 1:*/ 0, 100, 0, 0}));
  EXPECT_EQ(o.replica_expert, (std::vector<int32_t>{-1, -1, -1, 0, -1, -1}));
  EXPECT_EQ(o.replica_src, (std::vector<int32_t>{-1, -1, -1, 0, -1, -1}));
  EXPECT_EQ(o.rank_time_us, (std::vector<double>{200.0, 0.0, 100.0, 100.0}));
  EXPECT_EQ(o.rank_tokens, (std::vector<int64_t>{200, 0, 100, 100}));
  EXPECT_EQ(o.stats, (std::vector<int32_t>{1, 1, 0, 0}));
  EXPECT_EQ(moebal_test::check_probe_plan(c, o, 0), "");
}

TEST(ProbePlan, WindowBlocksTheOnlyMove) {
  const ProbeCase c = two_rank_case(99.999, 3);  // 1 ns short of the transfer time
  const ProbePlanOut o = run_cpu(c);
  EXPECT_EQ(o.quota, (std::vector<int32_t>{100, 0, 0, 0, 100, 0, 0, 0}));
  EXPECT_EQ(o.replica_expert, (std::vector<int32_t>(6, -1)));
  EXPECT_EQ(o.stats, (std::vector<int32_t>{0, 0, 1, 0}));
  EXPECT_EQ(o.rank_time_us[2], 200.0);
}

TEST(ProbePlan, NoExtraSlotsNoReplicas) {
  ProbeCase c = two_rank_case(std::numeric_limits<double>::infinity(), 0);
  const ProbePlanOut o = run_cpu(c);
  EXPECT_TRUE(o.replica_expert.empty());
  EXPECT_EQ(o.stats, (std::vector<int32_t>{0, 0, 0, 0}));  // the slot cap is not a window block
  c.cfg.max_extra_slots = 3;
  c.cfg.max_iters = 0;
  EXPECT_EQ(run_cpu(c).stats, (std::vector<int32_t>{0, 0, 0, 0}));
}

TEST(ProbePlan, ExistingCopyNeedsNoTransfer) {
  // Expert 0 has a second static copy on rank 1: tokens move there without a replica, even with a
  // zero window.
  ProbeCase c = two_rank_case(0.0, 3);
  c.cfg.num_slots = 4;
  c.phy2log = {0, 1, 0, 1};
  c.counts = {100, 0, 0, 0};  // only rank 0 sends, so all of it is pinned: nothing to do
  EXPECT_EQ(run_cpu(c).stats[0], 0);
  c.counts = {0, 0, 100, 0};  // rank 1 holds expert 0 itself: local, balanced enough
  EXPECT_EQ(run_cpu(c).quota, (std::vector<int32_t>{0, 0, 0, 0, 0, 100, 0, 0}));
}

TEST(ProbePlan, MinGainStopsSmallMoves) {
  ProbeCase c = two_rank_case(1e6, 3);
  c.cfg.min_gain_us = 100.0;  // the best move gains exactly 100 us: not more than min_gain
  EXPECT_EQ(run_cpu(c).stats[0], 0);
  c.cfg.min_gain_us = 99.0;
  EXPECT_EQ(run_cpu(c).stats[0], 1);
}

class ProbeProperties : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};

TEST_P(ProbeProperties, InvariantsAndPrunedSearchIsExact) {
  const auto [R, E, copies, rpn] = GetParam();
  const int cases = R >= 32 ? 40 : 150;
  int moved = 0, blocked = 0;
  for (int i = 0; i < cases; ++i) {
    const uint32_t seed = static_cast<uint32_t>(i * 7919 + R * 131 + E * 17 + copies);
    const int S = static_cast<int>(seed % 5);  // 0..4
    const int K = static_cast<int>(1 + seed % 20);
    const ProbeCase c = moebal_test::make_probe_case(seed, R, E, 2, copies, rpn, S, K);
    const ProbePlanOut o = run_cpu(c);
    for (int l = 0; l < c.L; ++l) {
      const std::string err = moebal_test::check_probe_plan(c, o, l);
      ASSERT_EQ(err, "") << "seed " << seed << " layer " << l;
      moved += o.stats[l * moebal::core::kProbeNumStats + moebal::core::kProbeStatMoves] > 0;
      blocked += o.stats[l * moebal::core::kProbeNumStats + moebal::core::kProbeStatWindowBlocked] > 0;
    }
    const ProbePlanOut x = run_cpu(c, /*exhaustive=*/true);
    ASSERT_EQ(o.quota, x.quota) << "seed " << seed;
    ASSERT_EQ(o.replica_expert, x.replica_expert) << "seed " << seed;
    ASSERT_EQ(o.replica_src, x.replica_src) << "seed " << seed;
    ASSERT_EQ(o.stats, x.stats) << "seed " << seed;
    ASSERT_EQ(o.rank_time_us, x.rank_time_us) << "seed " << seed;
  }
  // The generator must exercise both outcomes, or the invariants above are vacuous.
  if (R > 1) {
    EXPECT_GT(moved, cases / 4);
    EXPECT_GT(blocked, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ProbeProperties,
                         ::testing::Values(std::make_tuple(1, 5, 0, 0), std::make_tuple(2, 2, 0, 0),
                                           std::make_tuple(3, 17, 0, 0), std::make_tuple(3, 17, 2, 0),
                                           std::make_tuple(8, 64, 0, 0), std::make_tuple(8, 61, 1, 4),
                                           std::make_tuple(5, 33, 3, 1), std::make_tuple(16, 128, 1, 8),
                                           std::make_tuple(32, 256, 0, 8), std::make_tuple(64, 130, 1, 8)));

TEST(ProbePlan, BottleneckNeverWorsensAndUsuallyImproves) {
  // Strong skew, unlimited windows: the plan must cut the bottleneck on most layers.
  const ProbeCase c = moebal_test::make_probe_case(12345, 8, 64, 64, 0, 0, 3, 16);
  ProbeCase u = c;
  for (double& w : u.window_us) w = std::numeric_limits<double>::infinity();
  const ProbePlanOut o = run_cpu(u);
  int improved = 0;
  for (int l = 0; l < u.L; ++l) {
    double before = 0, after = 0;
    for (int r = 0; r < 8; ++r) {
      before = std::max(before, o.rank_time_us[(l * 2) * 8 + r]);
      after = std::max(after, o.rank_time_us[(l * 2 + 1) * 8 + r]);
    }
    EXPECT_LE(after, before);
    improved += after < before;
  }
  EXPECT_GT(improved, u.L / 2);
}

// ---- bad input --------------------------------------------------------------------------------

TEST(ProbePlanArgs, RejectsBadConfig) {
  const ProbeCase base = two_rank_case(100.0, 3);
  auto bad = [&](auto mutate) {
    ProbeCase c = base;
    mutate(c);
    std::vector<unsigned char> ws(1 << 16);
    ProbePlanOut o(base);
    EXPECT_THROW(moebal::core::probe_plan(c.cfg, c.L, c.inputs(), o.outputs(), ws.data(), ws.size()),
                 moebal::ValueError);
  };
  bad([](ProbeCase& c) { c.cfg.max_extra_slots = -1; });
  bad([](ProbeCase& c) { c.cfg.max_iters = -1; });
  bad([](ProbeCase& c) { c.cfg.num_ranks = 65; });
  bad([](ProbeCase& c) { c.cfg.num_ranks = 0; });
  bad([](ProbeCase& c) { c.cfg.num_slots = 3; });        // not a multiple of R
  bad([](ProbeCase& c) { c.cfg.num_experts = 4; });      // more experts than slots
  bad([](ProbeCase& c) { c.cfg.ranks_per_node = 3; });   // does not divide R
  bad([](ProbeCase& c) { c.cfg.intra_node_GBps = std::nan(""); });
  bad([](ProbeCase& c) { c.cfg.inter_node_GBps = 0.0; });
  bad([](ProbeCase& c) { c.cfg.expert_bytes = -1; });
  bad([](ProbeCase& c) { c.cfg.min_gain_us = std::numeric_limits<double>::infinity(); });
  bad([](ProbeCase& c) { c.counts[2] = -1; });
  bad([](ProbeCase& c) { c.phy2log[1] = 2; });           // id out of range
  bad([](ProbeCase& c) { c.phy2log[1] = 0; });           // expert 1 has no copy
  bad([](ProbeCase& c) { c.fixed_us[0] = std::numeric_limits<double>::infinity(); });
  bad([](ProbeCase& c) { c.us_per_token[1] = std::nan(""); });
  bad([](ProbeCase& c) { c.us_per_token[1] = -0.5; });
  bad([](ProbeCase& c) { c.window_us[0] = std::nan(""); });
  bad([](ProbeCase& c) { c.window_us[1] = -1.0; });
  bad([](ProbeCase& c) { c.window_us[1] = 1e12; });     // finite but beyond the supported range
  bad([](ProbeCase& c) { c.counts = {0x7fffffff, 0, 1, 0}; });  // layer total overflows int32
}

TEST(ProbePlan, LargeCountsTakeTheExactPath) {
  // Counts of 2^24 and more leave the 32-bit column-sum fast path; the plan must stay consistent.
  for (uint32_t seed = 0; seed < 20; ++seed) {
    ProbeCase c = moebal_test::make_probe_case(seed, 6, 13, 2, static_cast<int>(seed % 2), 3);
    for (size_t i = 0; i < c.counts.size(); i += 7) c.counts[i] = (1 << 24) + static_cast<int32_t>(i);
    const ProbePlanOut o = run_cpu(c);
    for (int l = 0; l < c.L; ++l) ASSERT_EQ(moebal_test::check_probe_plan(c, o, l), "") << "seed " << seed;
    ASSERT_EQ(o.quota, run_cpu(c, /*exhaustive=*/true).quota);
  }
}

// The planner splits multi-copy experts per tier from node column sums (N tokens, and for a tier of
// two (N + D) / 2 with D the signed parity sum) rather than source by source. The "before" tokens
// and times must equal the locality-first default split of every row (probe_default_quota): tiers
// of one, two (same node, different nodes) and three or more holders, odd node sizes and counts.
TEST(ProbePlan, MultiCopySplitEqualsTheDefaultQuota) {
  const int shapes[][2] = {{6, 3}, {8, 4}, {12, 3}, {5, 1}, {7, 0}, {64, 8}, {10, 5}, {16, 16}};
  int tiers[4] = {0, 0, 0, 0};  // rows sent to a tier of 1, 2, 3+ holders, and kept by a holder
  for (const auto& shape : shapes) {
    const int R = shape[0], rpn = shape[1];
    for (uint32_t seed = 0; seed < 30; ++seed) {
      std::mt19937 rng(seed * 977 + static_cast<uint32_t>(R));
      auto U = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
      ProbeCase c;
      const int E = U(1, 40), copies = U(1, 3), spg = (E + R - 1) / R + copies;
      c.cfg.num_ranks = R;
      c.cfg.num_experts = E;
      c.cfg.num_slots = spg * R;
      c.cfg.ranks_per_node = rpn;
      c.cfg.max_extra_slots = U(0, 3);
      c.cfg.max_iters = U(0, 8);
      c.cfg.expert_bytes = 1'000'000;
      c.L = 2;
      const int hot = U(1, 4);
      for (int l = 0; l < c.L; ++l) {
        std::vector<int32_t> slots(static_cast<size_t>(spg) * R, -1);
        std::vector<int> fill(R, 0);
        for (int e = 0; e < E; ++e) {  // every expert once, then copies of a few hot ones anywhere
          int r = U(0, R - 1);
          while (fill[r] >= spg) r = (r + 1) % R;
          slots[static_cast<size_t>(r) * spg + fill[r]++] = e;
        }
        for (int r = 0; r < R; ++r)
          while (fill[r] < spg) slots[static_cast<size_t>(r) * spg + fill[r]++] = U(0, 3) ? U(0, hot - 1) % E : U(0, E - 1);
        c.phy2log.insert(c.phy2log.end(), slots.begin(), slots.end());
        for (int i = 0; i < R * E; ++i) c.counts.push_back(U(0, 2) ? U(0, 99) : 0);
        for (int r = 0; r < R; ++r) c.window_us.push_back(1e3);
      }
      for (int r = 0; r < R; ++r) {
        c.fixed_us.push_back(0.5 * U(0, 8));
        c.us_per_token.push_back(0.01 * U(1, 5));
      }
      const ProbePlanOut o = run_cpu(c);
      const int rpn_eff = c.cfg.nodes_ranks();
      for (int l = 0; l < c.L; ++l) {
        std::vector<uint64_t> holders(E, 0);
        for (int i = 0; i < spg * R; ++i)
          holders[c.phy2log[static_cast<size_t>(l) * spg * R + i]] |= uint64_t(1) << (i / spg);
        std::vector<int64_t> m(static_cast<size_t>(R) * E, 0);
        std::vector<int32_t> row(R);
        for (int s = 0; s < R; ++s) {
          const uint64_t node = moebal::core::probe_detail::node_mask(s, rpn_eff);
          for (int e = 0; e < E; ++e) {
            const int32_t n = c.counts[(static_cast<size_t>(l) * R + s) * E + e];
            moebal::core::probe_default_quota(c.cfg, s, holders[e], n, row.data());
            for (int d = 0; d < R; ++d) m[static_cast<size_t>(d) * E + e] += row[d];
            const uint64_t h = holders[e], near = h & node, tier = near ? near : h;
            const int k = moebal::core::probe_detail::popcount64(tier);
            ++tiers[(h >> s) & 1 ? 3 : k >= 3 ? 2 : k - 1];
          }
        }
        for (int r = 0; r < R; ++r) {
          int64_t tokens = 0, t_ps = 0;
          for (int e = 0; e < E; ++e) {
            const int64_t v = m[static_cast<size_t>(r) * E + e];
            tokens += v;
            if (v > 0) t_ps += moebal::core::probe_us_to_ps(c.fixed_us[r]) + moebal::core::probe_us_to_ps(c.us_per_token[r]) * v;
          }
          ASSERT_EQ(o.rank_tokens[(static_cast<size_t>(l) * 2) * R + r], tokens)
              << "R " << R << " rpn " << rpn << " seed " << seed << " layer " << l << " rank " << r;
          ASSERT_EQ(o.rank_time_us[(static_cast<size_t>(l) * 2) * R + r], static_cast<double>(t_ps) * 1e-6)
              << "R " << R << " rpn " << rpn << " seed " << seed << " layer " << l << " rank " << r;
        }
        ASSERT_EQ(moebal_test::check_probe_plan(c, o, l), "") << "R " << R << " seed " << seed << " layer " << l;
      }
    }
  }
  for (int i = 0; i < 4; ++i) EXPECT_GT(tiers[i], 100) << "tier kind " << i << " barely exercised";
}

// Rank times below 2^57 ps are ordered as packed (time, rank) words, larger ones as pairs. With no
// fixed times, equal per-token times on every rank and unlimited windows, multiplying the per-token
// time by 10^6 (1 ns -> 1 ms per token) scales every compared quantity exactly, so the plan must not
// change while the times cross 2^57 ps.
TEST(ProbePlan, HugeTimesGiveTheSamePlan) {
  int huge = 0;
  for (uint32_t seed = 0; seed < 20; ++seed) {
    ProbeCase c = moebal_test::make_probe_case(seed, 8, 16, 2, static_cast<int>(seed % 2), 4, 3, 12);
    int64_t most = 1;  // scale the counts so the fullest layer has about 1.5e9 tokens (< 2^31)
    for (int l = 0; l < c.L; ++l) {
      int64_t t = 0;
      for (int i = 0; i < 8 * 16; ++i) t += c.counts[static_cast<size_t>(l) * 8 * 16 + i];
      most = std::max(most, t);
    }
    for (auto& n : c.counts) n *= static_cast<int32_t>(1'500'000'000 / most);
    for (auto& w : c.window_us) w = std::numeric_limits<double>::infinity();
    std::fill(c.fixed_us.begin(), c.fixed_us.end(), 0.0);
    std::fill(c.us_per_token.begin(), c.us_per_token.end(), 1e-3);
    const ProbePlanOut small = run_cpu(c);
    std::fill(c.us_per_token.begin(), c.us_per_token.end(), 1e3);
    const ProbePlanOut big = run_cpu(c);
    ASSERT_EQ(small.quota, big.quota) << "seed " << seed;
    ASSERT_EQ(small.replica_expert, big.replica_expert) << "seed " << seed;
    ASSERT_EQ(small.replica_src, big.replica_src) << "seed " << seed;
    ASSERT_EQ(small.stats, big.stats) << "seed " << seed;
    ASSERT_EQ(small.rank_tokens, big.rank_tokens) << "seed " << seed;
    huge += *std::max_element(big.rank_time_us.begin(), big.rank_time_us.end()) >= std::ldexp(1.0, 57) * 1e-6;
  }
  EXPECT_GT(huge, 10);  // most cases take the pair ordering
}

// The column sums and the time order have an AVX2 clone, picked at run time from cpuid; the plan
// must not depend on the path. Both paths on random cases of every kind (no copies, two-holder and
// wider tiers, odd node sizes), plus counts of 2^24 and more (the column sums' 64-bit fallback).
TEST(ProbePlan, KernelPathsGiveTheSamePlan) {
  if (!moebal::core::detail::probe_avx2_kernels()) GTEST_SKIP() << "this CPU has only the portable kernels";
  const std::tuple<int, int, int, int> shapes[] = {{1, 5, 0, 0},    {3, 17, 2, 0},   {8, 61, 1, 4},
                                                   {5, 33, 3, 1},   {12, 40, 2, 3},  {16, 128, 1, 8},
                                                   {33, 99, 2, 11}, {64, 130, 0, 8}, {64, 256, 1, 8}};
  int moved = 0;
  for (const auto& [R, E, copies, rpn] : shapes) {
    for (uint32_t i = 0; i < 12; ++i) {
      const uint32_t seed = i * 104729u + static_cast<uint32_t>(R * 31 + E);
      ProbeCase c = moebal_test::make_probe_case(seed, R, E, 2, copies, rpn, static_cast<int>(seed % 5),
                                                 static_cast<int>(1 + seed % 24));
      if (i % 4 == 3) c.counts[seed % c.counts.size()] = (1 << 24) + static_cast<int32_t>(seed % 1000);
      const ProbePlanOut fast = run_cpu(c), portable = run_cpu(c, false, /*portable=*/true);
      ASSERT_EQ(fast.quota, portable.quota) << "R " << R << " seed " << seed;
      ASSERT_EQ(fast.replica_expert, portable.replica_expert) << "R " << R << " seed " << seed;
      ASSERT_EQ(fast.replica_src, portable.replica_src) << "R " << R << " seed " << seed;
      ASSERT_EQ(fast.stats, portable.stats) << "R " << R << " seed " << seed;
      ASSERT_EQ(fast.rank_time_us, portable.rank_time_us) << "R " << R << " seed " << seed;
      ASSERT_EQ(fast.rank_tokens, portable.rank_tokens) << "R " << R << " seed " << seed;
      moved += fast.stats[moebal::core::kProbeStatMoves] > 0;
    }
  }
  EXPECT_GT(moved, 50);  // the plans compared are not empty
}

TEST(ProbePlanArgs, RejectsSmallWorkspaceAndNullInputs) {
  const ProbeCase c = two_rank_case(100.0, 3);
  ProbePlanOut o(c);
  std::vector<unsigned char> ws(moebal::core::probe_workspace_bytes(c.cfg));
  EXPECT_THROW(moebal::core::probe_plan(c.cfg, 1, c.inputs(), o.outputs(), ws.data(), ws.size() - 65),
               moebal::ValueError);
  auto in = c.inputs();
  in.counts = nullptr;
  EXPECT_THROW(moebal::core::probe_plan(c.cfg, 1, in, o.outputs(), ws.data(), ws.size()), moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_plan(c.cfg, -1, c.inputs(), o.outputs(), ws.data(), ws.size()),
               moebal::ValueError);
  try {
    ProbeCase n = c;
    n.counts[3] = -4;
    moebal::core::probe_plan(n.cfg, 1, n.inputs(), o.outputs(), ws.data(), ws.size());
    FAIL() << "no throw";
  } catch (const moebal::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("counts[0, 1, 1] = -4"), std::string::npos) << e.what();
  }
}

TEST(ProbePlanArgs, NullOutputsAreSkipped) {
  const ProbeCase c = moebal_test::make_probe_case(7, 3, 17, 3, 1, 0);
  std::vector<unsigned char> ws(moebal::core::probe_workspace_bytes(c.cfg));
  std::vector<int32_t> stats(c.L * moebal::core::kProbeNumStats);
  moebal::core::ProbeOutputs out;
  out.stats = stats.data();
  moebal::core::probe_plan(c.cfg, c.L, c.inputs(), out, ws.data(), ws.size());
  EXPECT_EQ(stats, run_cpu(c).stats);
}

}  // namespace

namespace {

TEST(ProbeDetail, ParallelTakeEqualsSerialTake) {
  namespace pd = moebal::core::probe_detail;
  std::mt19937 rng(42);
  for (int it = 0; it < 3000; ++it) {
    const int R = 1 + static_cast<int>(rng() % 64);
    const int rpn_choices[] = {1, R};
    const int rpn = (R % 4 == 0 && rng() % 2) ? 4 : rpn_choices[rng() % 2];
    std::vector<int64_t> q(R);
    for (auto& v : q) v = rng() % 3 == 0 ? 0 : static_cast<int64_t>(rng() % 1000);
    const int bn = static_cast<int>(rng() % R);
    if (R < 2) continue;
    int d = static_cast<int>(rng() % R);
    if (d == bn) d = (d + 1) % R;
    int64_t pool = 0;
    for (int s = 0; s < R; ++s) pool += s == bn ? 0 : q[s];
    const int64_t x = pool == 0 ? 0 : static_cast<int64_t>(rng() % (pool + 1));
    std::vector<int32_t> serial(R), node(R);
    for (int r = 0; r < R; ++r) node[r] = r / rpn;
    pd::take_tokens(q.data(), bn, d, R, rpn, x, serial.data());
    int64_t sum = 0;
    for (int s = 0; s < R; ++s) {
      ASSERT_EQ(pd::take_from(q.data(), bn, d, R, node.data(), x, s), serial[s]) << "it " << it << " s " << s;
      sum += serial[s];
    }
    ASSERT_EQ(sum, x);
    ASSERT_EQ(serial[bn], 0);
  }
}

}  // namespace

namespace {

using moebal::core::kProbeQuotaFields;

struct SparseOut {
  std::vector<int32_t> entries, num;
};

// Plans c with the dense quota and the sparse one in the same call, and the sparse one alone.
std::pair<ProbePlanOut, SparseOut> run_sparse(const ProbeCase& c) {
  ProbePlanOut o(c);
  const size_t cap = moebal::core::probe_max_quota_entries(c.cfg);
  SparseOut sp{std::vector<int32_t>(c.L * cap * kProbeQuotaFields, -7), std::vector<int32_t>(c.L, -7)};
  std::vector<unsigned char> ws(moebal::core::probe_workspace_bytes(c.cfg));
  auto out = o.outputs();
  out.quota_entries = sp.entries.data();
  out.num_quota_entries = sp.num.data();
  moebal::core::probe_plan(c.cfg, c.L, c.inputs(), out, ws.data(), ws.size());
  // The sparse output alone (no dense quota, no other output) must be the same list.
  SparseOut alone{std::vector<int32_t>(sp.entries.size(), -7), std::vector<int32_t>(c.L, -7)};
  moebal::core::ProbeOutputs lean;
  lean.quota_entries = alone.entries.data();
  lean.num_quota_entries = alone.num.data();
  moebal::core::probe_plan(c.cfg, c.L, c.inputs(), lean, ws.data(), ws.size());
  EXPECT_EQ(alone.num, sp.num);
  for (int l = 0; l < c.L; ++l)
    for (size_t i = 0; i < static_cast<size_t>(sp.num[l]) * kProbeQuotaFields; ++i)
      EXPECT_EQ(alone.entries[l * cap * kProbeQuotaFields + i], sp.entries[l * cap * kProbeQuotaFields + i]);
  return {std::move(o), std::move(sp)};
}

// Independent reference of the default split: the CPU/GPU-shared per-rank formula.
std::vector<int32_t> default_row(const ProbeCase& c, int l, int s, int e) {
  const int R = c.cfg.num_ranks, spg = c.cfg.num_slots / R;
  uint64_t holders = 0;
  for (int k = 0; k < c.cfg.num_slots; ++k)
    if (c.phy2log[static_cast<size_t>(l) * c.cfg.num_slots + k] == e) holders |= uint64_t(1) << (k / spg);
  const int32_t n = c.counts[(static_cast<size_t>(l) * R + s) * c.cfg.num_experts + e];
  std::vector<int32_t> row(R);
  for (int r = 0; r < R; ++r)
    row[r] = static_cast<int32_t>(moebal::core::probe_detail::init_quota(n, holders, s, r, c.cfg.nodes_ranks()));
  std::vector<int32_t> api(R, -1);
  moebal::core::probe_default_quota(c.cfg, s, holders, n, api.data());
  EXPECT_EQ(api, row);
  return row;
}

// Checks the sparse list of every layer against the dense quota: sorted (expert, src, dst), tokens > 0,
// within the capacity, complete rows, and every row it leaves out equal to the default split.
void expect_sparse_matches_dense(const ProbeCase& c, const ProbePlanOut& o, const SparseOut& sp, uint32_t seed) {
  const int R = c.cfg.num_ranks, E = c.cfg.num_experts;
  const size_t cap = moebal::core::probe_max_quota_entries(c.cfg), RE = static_cast<size_t>(R) * E;
  std::vector<int32_t> dense(o.quota.size(), -7);
  moebal::core::probe_quota_to_dense(c.cfg, c.L, c.counts.data(), c.phy2log.data(), sp.entries.data(), sp.num.data(), cap,
                                     dense.data());
  ASSERT_EQ(dense, o.quota) << "seed " << seed;
  for (int l = 0; l < c.L; ++l) {
    ASSERT_GE(sp.num[l], 0);
    ASSERT_LE(static_cast<size_t>(sp.num[l]), cap);
    std::vector<char> listed(RE, 0);
    const int32_t* ent = sp.entries.data() + l * cap * kProbeQuotaFields;
    for (int i = 0; i < sp.num[l]; ++i) {
      const int32_t* q = ent + i * kProbeQuotaFields;
      ASSERT_GT(q[3], 0);
      ASSERT_EQ(q[3], o.quota[((l * RE) + static_cast<size_t>(q[0]) * E + q[1]) * R + q[2]]);
      listed[static_cast<size_t>(q[0]) * E + q[1]] = 1;
    }
    // A row the list leaves out keeps the default split; a listed row lists all its non-zeros.
    int changed = 0;
    for (int s = 0; s < R; ++s) {
      for (int e = 0; e < E; ++e) {
        const int32_t* row = o.quota.data() + ((l * RE) + static_cast<size_t>(s) * E + e) * R;
        const std::vector<int32_t> def = default_row(c, l, s, e);
        const bool differs = !std::equal(def.begin(), def.end(), row);
        changed += differs;
        if (!listed[static_cast<size_t>(s) * E + e]) {
          ASSERT_FALSE(differs) << "seed " << seed << " row " << s << "," << e;
        }
      }
    }
    // Listed rows are rows some move touched; the planner lists no row it did not change, except
    // a row whose moves cancel out, which needs a later move of the same expert.
    int listed_rows = 0;
    for (char x : listed) listed_rows += x;
    ASSERT_GE(listed_rows, changed);
    if (o.stats[l * moebal::core::kProbeNumStats] == 0) {
      ASSERT_EQ(sp.num[l], 0) << "seed " << seed;
    }
  }
}

class ProbeSparse : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};

TEST_P(ProbeSparse, SparseQuotaExpandsToTheDenseQuota) {
  const auto [R, E, copies, rpn] = GetParam();
  const int cases = R >= 32 ? 60 : 250;
  int with_moves = 0;
  std::mt19937 rng(static_cast<uint32_t>(R * 1009 + E * 7 + copies));
  for (int i = 0; i < cases; ++i) {
    const uint32_t seed = rng();
    const int S = static_cast<int>(seed % 5);         // 0 (no replicas) .. 4
    const int K = static_cast<int>((seed >> 3) % 41);  // 0 (no moves) .. 40
    ProbeCase c = moebal_test::make_probe_case(seed, R, E, 2, copies, rpn, S, K);
    if (seed % 3 == 0) {  // empty experts: whole columns of zeros
      for (int l = 0; l < c.L; ++l)
        for (int e = static_cast<int>(seed % 4); e < E; e += 3)
          for (int s = 0; s < R; ++s) c.counts[(static_cast<size_t>(l) * R + s) * E + e] = 0;
    }
    const auto [o, sp] = run_sparse(c);
    for (int l = 0; l < c.L; ++l) with_moves += sp.num[l] > 0;
    expect_sparse_matches_dense(c, o, sp, seed);
    if (::testing::Test::HasFatalFailure()) return;
  }
  if (R > 1) {
    EXPECT_GT(with_moves, cases / 4);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ProbeSparse,
                         ::testing::Values(std::make_tuple(1, 7, 0, 0), std::make_tuple(2, 3, 0, 0),
                                           std::make_tuple(3, 17, 2, 0), std::make_tuple(5, 33, 3, 1),
                                           std::make_tuple(7, 29, 1, 7), std::make_tuple(8, 61, 1, 4),
                                           std::make_tuple(12, 97, 2, 4), std::make_tuple(32, 256, 0, 8),
                                           std::make_tuple(63, 127, 1, 9), std::make_tuple(64, 256, 0, 8),
                                           std::make_tuple(64, 130, 2, 8)));

TEST(ProbeSparse, HandWorkedTwoRanks) {
  const ProbeCase c = two_rank_case(100.0, 3);
  const auto [o, sp] = run_sparse(c);
  // Rank 1's 100 tokens of expert 0 move to rank 1's new replica; nothing else changes.
  ASSERT_EQ(sp.num, (std::vector<int32_t>{1}));
  EXPECT_EQ(std::vector<int32_t>(sp.entries.begin(), sp.entries.begin() + 4), (std::vector<int32_t>{1, 0, 1, 100}));
  const ProbeCase blocked = two_rank_case(99.999, 3);
  EXPECT_EQ(run_sparse(blocked).second.num, (std::vector<int32_t>{0}));
}

TEST(ProbeSparse, DefaultQuotaSplitsOverTheNearestHolders) {
  ProbeConfig cfg;
  cfg.num_ranks = 8;
  cfg.num_experts = 8;
  cfg.num_slots = 16;
  cfg.ranks_per_node = 4;
  std::vector<int32_t> row(8);
  // Holders 1, 2 (node 0) and 5 (node 1): source 0 splits 7 tokens over 1 and 2, remainder first to
  // the holder at index 0 mod 2 = 1; source 3 to the same tier with the rotation starting at 3 mod 2.
  moebal::core::probe_default_quota(cfg, 0, 0b100110, 7, row.data());
  EXPECT_EQ(row, (std::vector<int32_t>{0, 4, 3, 0, 0, 0, 0, 0}));
  moebal::core::probe_default_quota(cfg, 3, 0b100110, 7, row.data());
  EXPECT_EQ(row, (std::vector<int32_t>{0, 3, 4, 0, 0, 0, 0, 0}));
  moebal::core::probe_default_quota(cfg, 6, 0b100110, 7, row.data());  // node 1 holds it on rank 5
  EXPECT_EQ(row, (std::vector<int32_t>{0, 0, 0, 0, 0, 7, 0, 0}));
  moebal::core::probe_default_quota(cfg, 2, 0b100110, 7, row.data());  // a holder keeps its own
  EXPECT_EQ(row, (std::vector<int32_t>{0, 0, 7, 0, 0, 0, 0, 0}));
  EXPECT_THROW(moebal::core::probe_default_quota(cfg, 8, 1, 7, row.data()), moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_default_quota(cfg, -1, 1, 7, row.data()), moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_default_quota(cfg, 0, 0, 7, row.data()), moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_default_quota(cfg, 0, uint64_t(1) << 8, 7, row.data()), moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_default_quota(cfg, 0, 1, -1, row.data()), moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_default_quota(cfg, 0, 1, 7, nullptr), moebal::ValueError);
}

TEST(ProbeSparse, RejectsBadSparseLists) {
  const ProbeCase c = two_rank_case(100.0, 3);
  const size_t cap = moebal::core::probe_max_quota_entries(c.cfg);
  ASSERT_GE(cap, 2u);
  std::vector<int32_t> dense(8);
  auto expect_bad = [&](std::vector<int32_t> entries, int32_t n, const char* what) {
    entries.resize(cap * kProbeQuotaFields, 0);
    const int32_t num[1] = {n};
    try {
      moebal::core::probe_quota_to_dense(c.cfg, 1, c.counts.data(), c.phy2log.data(), entries.data(), num, cap,
                                         dense.data());
      ADD_FAILURE() << "no throw for " << what;
    } catch (const moebal::ValueError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  // counts = {src 0: e0 100, e1 0; src 1: e0 100, e1 0}; the good list moves src 1's tokens to rank 1.
  moebal::core::probe_quota_to_dense(c.cfg, 1, c.counts.data(), c.phy2log.data(),
                                     std::vector<int32_t>{1, 0, 1, 100, 0, 0, 0, 0}.data(),
                                     std::vector<int32_t>{1}.data(), cap, dense.data());
  EXPECT_EQ(dense, (std::vector<int32_t>{100, 0, 0, 0, 0, 100, 0, 0}));
  expect_bad({1, 0, 2, 100}, 1, "out of range");                       // dst beyond R
  expect_bad({1, 2, 1, 100}, 1, "out of range");                       // expert beyond E
  expect_bad({-1, 0, 1, 100}, 1, "out of range");                      // negative src
  expect_bad({1, 0, 1, 0}, 1, "out of range");                         // zero tokens
  expect_bad({1, 0, 1, 60, 1, 0, 0, 40}, 2, "strictly sorted");        // dst descending
  expect_bad({1, 0, 0, 60, 1, 0, 0, 40}, 2, "strictly sorted");        // duplicate entry
  expect_bad({1, 0, 0, 100, 0, 0, 0, 100}, 2, "strictly sorted");      // src descending within an expert
  expect_bad({1, 0, 1, 99}, 1, "sum to 99");                           // row does not add up
  expect_bad({1, 0, 1, 100}, static_cast<int32_t>(cap) + 1, "entries_per_layer");
  expect_bad({1, 0, 1, 100}, -1, "entries_per_layer");
  ProbeCase neg = c;
  neg.counts[1] = -3;
  EXPECT_THROW(moebal::core::probe_quota_to_dense(neg.cfg, 1, neg.counts.data(), neg.phy2log.data(),
                                                  std::vector<int32_t>(cap * 4).data(), std::vector<int32_t>{0}.data(), cap,
                                                  dense.data()),
               moebal::ValueError);
  ProbeCase badp = c;
  badp.phy2log = {0, 0};  // expert 1 has no copy
  EXPECT_THROW(moebal::core::probe_quota_to_dense(badp.cfg, 1, badp.counts.data(), badp.phy2log.data(),
                                                  std::vector<int32_t>(cap * 4).data(), std::vector<int32_t>{0}.data(), cap,
                                                  dense.data()),
               moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_quota_to_dense(c.cfg, 1, c.counts.data(), c.phy2log.data(), nullptr,
                                                  std::vector<int32_t>{0}.data(), cap, dense.data()),
               moebal::ValueError);
  EXPECT_THROW(moebal::core::probe_quota_to_dense(c.cfg, -1, c.counts.data(), c.phy2log.data(),
                                                  std::vector<int32_t>(cap * 4).data(), std::vector<int32_t>{0}.data(), cap,
                                                  dense.data()),
               moebal::ValueError);
  // probe_plan wants both sparse pointers or neither.
  ProbePlanOut o(c);
  std::vector<unsigned char> ws(moebal::core::probe_workspace_bytes(c.cfg));
  std::vector<int32_t> ent(cap * 4);
  auto out = o.outputs();
  out.quota_entries = ent.data();
  EXPECT_THROW(moebal::core::probe_plan(c.cfg, 1, c.inputs(), out, ws.data(), ws.size()), moebal::ValueError);
  int32_t num = -1;
  out.quota_entries = nullptr;
  out.num_quota_entries = &num;
  EXPECT_THROW(moebal::core::probe_plan(c.cfg, 1, c.inputs(), out, ws.data(), ws.size()), moebal::ValueError);
}

TEST(ProbeSparse, CapacityCoversEveryMoveTouchingEverySource) {
  // Few experts and many ranks: each move takes tokens from every other source, the worst case of
  // the capacity bound. All sources send to one expert held by rank 0; moves fan it out.
  for (int copies : {0, 1}) {
    ProbeCase c;
    const int R = 64, E = 2;
    c.cfg.num_ranks = R;
    c.cfg.num_experts = E;
    c.cfg.num_slots = R * (1 + copies);
    c.cfg.ranks_per_node = 8;
    c.cfg.max_extra_slots = 4;
    c.cfg.max_iters = 60;
    c.cfg.expert_bytes = 1;
    for (int r = 0; r < R; ++r) {
      for (int k = 0; k <= copies; ++k) c.phy2log.push_back(r < 32 && k == 0 ? 0 : 1);
      c.counts.push_back(1000 + r);
      c.counts.push_back(r % 5);
      c.fixed_us.push_back(1.0);
      c.us_per_token.push_back(0.01);
      c.window_us.push_back(std::numeric_limits<double>::infinity());
    }
    // Expert 0 on ranks 0..31 (copies), expert 1 on the rest: move tokens across the two groups.
    const auto [o, sp] = run_sparse(c);
    EXPECT_GT(o.stats[0], 10);
    expect_sparse_matches_dense(c, o, sp, 0);
  }
}

}  // namespace
