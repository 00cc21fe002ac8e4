// Random PROBE planning problems and an independent checker of a plan's invariants, shared by the
// CPU tests (test_probe.cpp) and the GPU-vs-CPU tests (cuda_test_probe.cu).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "moebal/core/probe.h"

namespace moebal_test {

struct ProbeCase {
  moebal::core::ProbeConfig cfg;
  int32_t L = 1;
  std::vector<int32_t> counts, phy2log;
  std::vector<double> fixed_us, us_per_token, window_us;

  moebal::core::ProbeInputs inputs() const {
    return {counts.data(), phy2log.data(), fixed_us.data(), us_per_token.data(), window_us.data()};
  }
};

struct ProbePlanOut {
  std::vector<int32_t> quota, replica_expert, replica_src, stats;
  std::vector<double> rank_time_us;
  std::vector<int64_t> rank_tokens;

  explicit ProbePlanOut(const ProbeCase& c) {
    const size_t R = c.cfg.num_ranks, E = c.cfg.num_experts, S = c.cfg.max_extra_slots, L = c.L;
    quota.assign(L * R * E * R, -7);
    replica_expert.assign(L * R * S, -7);
    replica_src.assign(L * R * S, -7);
    stats.assign(L * moebal::core::kProbeNumStats, -7);
    rank_time_us.assign(L * 2 * R, -7.0);
    rank_tokens.assign(L * 2 * R, -7);
  }
  moebal::core::ProbeOutputs outputs() {
    return {quota.data(), replica_expert.data(), replica_src.data(), rank_time_us.data(), rank_tokens.data(),
            stats.data()};
  }
};

/// Zipf-skewed counts, a static placement with or without redundant copies, ranks of different
/// speeds, and windows from "blocks everything" to unlimited.
inline ProbeCase make_probe_case(uint32_t seed, int R, int E, int L, int copies_per_rank, int ranks_per_node,
                                 int S = 3, int K = 16) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  ProbeCase c;
  c.L = L;
  c.cfg.num_ranks = R;
  c.cfg.num_experts = E;
  const int spg = (E + R - 1) / R + copies_per_rank;
  c.cfg.num_slots = spg * R;
  c.cfg.ranks_per_node = ranks_per_node;
  c.cfg.max_extra_slots = S;
  c.cfg.max_iters = K;
  c.cfg.expert_bytes = int64_t(1) << (20 + rng() % 6);  // 1..32 MiB
  c.cfg.intra_node_GBps = 100 + 400 * U(rng);
  c.cfg.inter_node_GBps = 10 + 40 * U(rng);
  c.cfg.min_gain_us = (rng() % 4 == 0) ? 2.0 * U(rng) : 0.0;
  const int window_mode = static_cast<int>(rng() % 4);
  const double t_intra = static_cast<double>(c.cfg.expert_bytes) / c.cfg.intra_node_GBps * 1e-3;  // us
  const bool homogeneous = rng() % 3 == 0;
  for (int r = 0; r < R; ++r) {
    const double speed = homogeneous ? 1.0 : 0.85 + 0.3 * U(rng);
    c.fixed_us.push_back(rng() % 5 == 0 ? 0.0 : std::round(20.0 * U(rng) * 1000) / 1000 * speed);
    c.us_per_token.push_back(rng() % 7 == 0 ? 0.0 : (0.002 + 0.05 * U(rng)) * speed);
  }
  const double zipf_s = 0.6 + 1.0 * U(rng);
  for (int l = 0; l < L; ++l) {
    std::vector<int32_t> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> slots(perm);
    while (static_cast<int>(slots.size()) < c.cfg.num_slots) slots.push_back(static_cast<int32_t>(rng() % E));
    std::shuffle(slots.begin(), slots.end(), rng);
    // Keep every expert present: the shuffle can't drop any (perm is inside slots).
    c.phy2log.insert(c.phy2log.end(), slots.begin(), slots.end());
    std::vector<double> w(E);
    for (int e = 0; e < E; ++e) w[perm[e]] = 1.0 / std::pow(e + 1.0, zipf_s);
    const double wsum = std::accumulate(w.begin(), w.end(), 0.0);
    for (int s = 0; s < R; ++s) {
      const double tokens = (rng() % 10 == 0) ? 0.0 : 4000.0 * U(rng);
      for (int e = 0; e < E; ++e)
        c.counts.push_back(static_cast<int32_t>(std::floor(tokens * w[e] / wsum * (0.5 + U(rng)))));
    }
    for (int r = 0; r < R; ++r) {
      double win = std::numeric_limits<double>::infinity();
      if (window_mode == 1) win = 0.0;
      if (window_mode == 2) win = t_intra * (4.0 * U(rng));
      if (window_mode == 3) win = 50.0 + 500.0 * U(rng);
      c.window_us.push_back(win);
    }
  }
  return c;
}

inline int64_t ps(double us) { return static_cast<int64_t>(std::nearbyint(us * 1e6)); }

/// Checks every invariant of the plan of layer l against the input; returns "" or a description.
inline std::string check_probe_plan(const ProbeCase& c, const ProbePlanOut& o, int l) {
  using moebal::core::probe_transfer_ps;
  const int R = c.cfg.num_ranks, E = c.cfg.num_experts, S = c.cfg.max_extra_slots;
  const int spg = c.cfg.num_slots / R, rpn = c.cfg.ranks_per_node == 0 ? R : c.cfg.ranks_per_node;
  const size_t RE = static_cast<size_t>(R) * E;
  std::vector<char> holds(RE, 0), native(RE, 0);
  for (int s = 0; s < c.cfg.num_slots; ++s) {
    const int e = c.phy2log[static_cast<size_t>(l) * c.cfg.num_slots + s];
    native[static_cast<size_t>(s / spg) * E + e] = holds[static_cast<size_t>(s / spg) * E + e] = 1;
  }
  std::vector<int64_t> in(R, 0), out(R, 0);
  const int64_t t_intra = probe_transfer_ps(c.cfg.expert_bytes, c.cfg.intra_node_GBps);
  const int64_t t_inter = rpn == R ? t_intra : probe_transfer_ps(c.cfg.expert_bytes, c.cfg.inter_node_GBps);
  int replicas = 0;
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < S; ++k) {
      const size_t i = (static_cast<size_t>(l) * R + r) * S + k;
      const int e = o.replica_expert[i], w = o.replica_src[i];
      if (e == -1) {
        if (w != -1) return "replica_src set on an unused slot";
        continue;
      }
      if (e < 0 || e >= E || w < 0 || w >= R) return "replica entry out of range";
      if (native[static_cast<size_t>(r) * E + e]) return "replica of an expert the rank holds natively";
      if (holds[static_cast<size_t>(r) * E + e]) return "two replicas of one expert on one rank";
      if (!native[static_cast<size_t>(w) * E + e]) return "replica weights from a rank without a native copy";
      holds[static_cast<size_t>(r) * E + e] = 1;
      const int64_t t = (w / rpn == r / rpn) ? t_intra : t_inter;
      in[r] += t;
      out[w] += t;
      ++replicas;
    }
  }
  const int32_t* st = o.stats.data() + static_cast<size_t>(l) * moebal::core::kProbeNumStats;
  if (st[moebal::core::kProbeStatNewReplicas] != replicas) return "new-replica count disagrees with the slots";
  if (st[moebal::core::kProbeStatMoves] > c.cfg.max_iters) return "more moves than k_max";
  if (replicas > 0) {  // every replica fits the windows of its receiver and sender
    for (int r = 0; r < R; ++r) {
      const int64_t win = std::isinf(c.window_us[static_cast<size_t>(l) * R + r])
                              ? std::numeric_limits<int64_t>::max()
                              : ps(c.window_us[static_cast<size_t>(l) * R + r]);
      if (in[r] > win || out[r] > win) return "transfer budget exceeds a rank's window";
    }
  }
  std::vector<int64_t> m(RE, 0);
  for (int s = 0; s < R; ++s) {
    for (int e = 0; e < E; ++e) {
      int64_t sum = 0;
      for (int d = 0; d < R; ++d) {
        const int32_t q = o.quota[((static_cast<size_t>(l) * R + s) * E + e) * R + d];
        if (q < 0) return "negative quota";
        if (q > 0 && !holds[static_cast<size_t>(d) * E + e]) return "quota to a rank without a copy";
        sum += q;
        m[static_cast<size_t>(d) * E + e] += q;
      }
      if (sum != c.counts[static_cast<size_t>(l) * RE + static_cast<size_t>(s) * E + e]) return "tokens not conserved";
      if (native[static_cast<size_t>(s) * E + e] &&
          o.quota[((static_cast<size_t>(l) * R + s) * E + e) * R + s] != sum)
        return "a source holding the expert sent tokens away";
    }
  }
  double max_before = 0, max_after = 0;
  for (int r = 0; r < R; ++r) {
    int64_t t = 0, n = 0;
    for (int e = 0; e < E; ++e) {
      const int64_t v = m[static_cast<size_t>(r) * E + e];
      if (v > 0) t += ps(c.fixed_us[r]) + ps(c.us_per_token[r]) * v;
      n += v;
    }
    const double before = o.rank_time_us[(static_cast<size_t>(l) * 2) * R + r];
    const double after = o.rank_time_us[(static_cast<size_t>(l) * 2 + 1) * R + r];
    if (after != static_cast<double>(t) * 1e-6) return "rank_time_us after disagrees with the quota";
    if (o.rank_tokens[(static_cast<size_t>(l) * 2 + 1) * R + r] != n) return "rank_tokens after disagrees";
    max_before = std::max(max_before, before);
    max_after = std::max(max_after, after);
  }
  if (max_after > max_before) return "the bottleneck time increased";
  return "";
}

}  // namespace moebal_test
