// Benchmark inputs for the PROBE planner, shared by bench_probe.cpp (CPU) and bench_probe.cu (GPU):
// DeepSeek-V3-like layers (E = 256, fp8 experts of 3 x 7168 x 2048 bytes = 44 MB), Zipf-skewed
// per-(source rank, expert) counts with a fixed seed, a static contiguous placement (optionally with
// redundant copies), identical linear per-rank models and a common hiding window.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "moebal/core/probe.h"

namespace moebal_bench {

struct ProbeWorkload {
  std::string name;
  moebal::core::ProbeConfig cfg;
  int32_t L = 58;
  std::vector<int32_t> counts, phy2log;
  std::vector<double> fixed_us, us_per_token, window_us;
  moebal::core::ProbeInputs inputs() const {
    return {counts.data(), phy2log.data(), fixed_us.data(), us_per_token.data(), window_us.data()};
  }
};

/// tokens_per_rank tokens x top_k per source rank and layer, expert popularity Zipf(zipf_s) in a
/// random order per layer, each source rank with its own mild perturbation.
inline ProbeWorkload make_probe_workload(int R, int E, int L, int ranks_per_node, int copies_per_rank,
                                         int tokens_per_rank, int top_k, double zipf_s, double window_us,
                                         uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  ProbeWorkload w;
  w.name = "R=" + std::to_string(R) + " E=" + std::to_string(E) + " L=" + std::to_string(L);
  w.L = L;
  w.cfg.num_ranks = R;
  w.cfg.num_experts = E;
  const int spg = E / R + copies_per_rank;
  w.cfg.num_slots = spg * R;
  w.cfg.ranks_per_node = ranks_per_node;
  w.cfg.max_extra_slots = 3;
  w.cfg.max_iters = 16;
  w.cfg.expert_bytes = int64_t(3) * 7168 * 2048;  // fp8 DeepSeek-V3 expert
  w.cfg.intra_node_GBps = 450.0;
  w.cfg.inter_node_GBps = 50.0;
  for (int r = 0; r < R; ++r) {
    w.fixed_us.push_back(4.0);
    w.us_per_token.push_back(0.02);
  }
  for (int l = 0; l < L; ++l) {
    std::vector<int32_t> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    // Static placement: experts in order, then each rank's redundant copies of the globally hottest
    // experts it does not hold (a crude EPLB stand-in, enough to exercise multi-copy experts).
    std::vector<int32_t> slots;
    for (int r = 0; r < R; ++r) {
      for (int i = 0; i < E / R; ++i) slots.push_back(r * (E / R) + i);
      for (int c = 0; c < copies_per_rank; ++c) {
        int32_t e = perm[(r * copies_per_rank + c) % E];
        if (e / (E / R) == r) e = perm[(r * copies_per_rank + c + R) % E];
        slots.push_back(e);
      }
    }
    w.phy2log.insert(w.phy2log.end(), slots.begin(), slots.end());
    std::vector<double> p(E);
    for (int i = 0; i < E; ++i) p[perm[i]] = 1.0 / std::pow(i + 1.0, zipf_s);
    const double psum = std::accumulate(p.begin(), p.end(), 0.0);
    for (int s = 0; s < R; ++s) {
      for (int e = 0; e < E; ++e) {
        const double mean = static_cast<double>(tokens_per_rank) * top_k * p[e] / psum;
        w.counts.push_back(static_cast<int32_t>(std::floor(mean * (0.7 + 0.6 * U(rng)))));
      }
    }
    for (int r = 0; r < R; ++r) w.window_us.push_back(window_us);
  }
  return w;
}

/// The configurations both benches report.
inline std::vector<ProbeWorkload> probe_workloads() {
  return {
      make_probe_workload(8, 256, 58, 8, 0, 4096, 8, 1.0, 300.0, 1),
      make_probe_workload(32, 256, 58, 8, 0, 4096, 8, 1.0, 300.0, 2),
      make_probe_workload(32, 256, 58, 8, 1, 4096, 8, 1.0, 300.0, 3),
      make_probe_workload(64, 256, 58, 8, 0, 4096, 8, 1.0, 300.0, 4),
      make_probe_workload(64, 256, 58, 8, 1, 4096, 8, 1.0, 300.0, 5),
  };
}

}  // namespace moebal_bench
