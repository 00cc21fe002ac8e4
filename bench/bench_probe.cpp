// PROBE planner on one CPU core: per-layer wall time over a 58-layer batch (median of repetitions)
// for three outputs a caller can ask for: the plan alone (replicas, per-rank times and tokens,
// stats), the plan with the sparse quota (the rows the moves touched), and the plan with the dense
// R x E x R quota; plus the plan quality on the same inputs. The thread's CPU time is reported
// beside the wall time: on a shared machine the two differ. Before timing, the sparse quota is
// expanded with probe_quota_to_dense and compared with the dense one (the run fails on a mismatch).
//   moebal_bench_probe [reps]
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "moebal/core/probe.h"
#include "probe_workload.h"

namespace {

double thread_cpu_us() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  namespace mc = moebal::core;
  const int reps = argc > 1 ? std::atoi(argv[1]) : 31;
  if (reps < 1) {
    std::fprintf(stderr, "usage: %s [reps >= 1]\n", argv[0]);
    return 2;
  }
  std::printf("| workload | copies/rank | us/layer wall (CPU) plan only | us/layer wall (CPU) plan + sparse quota | "
              "us/layer wall (CPU) plan + dense quota | sparse entries/layer mean (max) | IR tokens before -> after | "
              "time max/mean before -> after | moves/layer | new replicas/layer | window-blocked iters/layer |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& w : moebal_bench::probe_workloads()) {
    const size_t R = w.cfg.num_ranks, E = w.cfg.num_experts, S = w.cfg.max_extra_slots, L = w.L;
    const size_t cap = mc::probe_max_quota_entries(w.cfg);
    std::vector<unsigned char> ws(mc::probe_workspace_bytes(w.cfg));
    std::vector<int32_t> quota(L * R * E * R), rep_e(L * R * S), rep_src(L * R * S), stats(L * mc::kProbeNumStats);
    std::vector<int32_t> entries(L * cap * mc::kProbeQuotaFields), num_entries(L);
    std::vector<double> times(L * 2 * R);
    std::vector<int64_t> tokens(L * 2 * R);
    mc::ProbeOutputs lean{nullptr, rep_e.data(), rep_src.data(), times.data(), tokens.data(), stats.data()};
    mc::ProbeOutputs sparse = lean, dense = lean;
    sparse.quota_entries = entries.data();
    sparse.num_quota_entries = num_entries.data();
    dense.quota = quota.data();

    mc::ProbeOutputs both = sparse;
    both.quota = quota.data();
    mc::probe_plan(w.cfg, w.L, w.inputs(), both, ws.data(), ws.size());
    std::vector<int32_t> dense_again(L * R * E * R);  // freed before timing (243 MB at R = 64)
    mc::probe_quota_to_dense(w.cfg, w.L, w.counts.data(), w.phy2log.data(), entries.data(), num_entries.data(), cap,
                             dense_again.data());
    if (dense_again != quota) {
      std::fprintf(stderr, "%s: the sparse quota does not expand to the dense one\n", w.name.c_str());
      return 1;
    }
    std::vector<int32_t>().swap(dense_again);
    double ent_mean = 0, ent_max = 0;
    for (size_t l = 0; l < L; ++l) {
      ent_mean += num_entries[l] / static_cast<double>(L);
      ent_max = std::max(ent_max, static_cast<double>(num_entries[l]));
    }

    double per_layer[3], cpu_layer[3];
    const mc::ProbeOutputs* variants[3] = {&lean, &sparse, &dense};
    for (int variant = 0; variant < 3; ++variant) {
      std::vector<double> t, c;
      // Warm-up: at least 3 runs and 50 ms (clock ramp, caches, first touch of the outputs).
      const auto w0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 3 || std::chrono::steady_clock::now() - w0 < std::chrono::milliseconds(50); ++i)
        mc::probe_plan(w.cfg, w.L, w.inputs(), *variants[variant], ws.data(), ws.size());
      for (int i = 0; i < reps; ++i) {
        const double c0 = thread_cpu_us();
        const auto t0 = std::chrono::steady_clock::now();
        mc::probe_plan(w.cfg, w.L, w.inputs(), *variants[variant], ws.data(), ws.size());
        const auto t1 = std::chrono::steady_clock::now();
        const double c1 = thread_cpu_us();
        t.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / w.L);
        c.push_back((c1 - c0) / w.L);
      }
      per_layer[variant] = median(t);
      cpu_layer[variant] = median(c);
    }
    double ir0 = 0, ir1 = 0, tr0 = 0, tr1 = 0, moves = 0, reps_new = 0, blocked = 0;
    for (size_t l = 0; l < L; ++l) {
      double n0 = 0, n1 = 0, m0 = 0, m1 = 0, s0 = 0, s1 = 0, x0 = 0, x1 = 0;
      for (size_t r = 0; r < R; ++r) {
        const double a = tokens[(l * 2) * R + r], b = tokens[(l * 2 + 1) * R + r];
        n0 += a, n1 += b, m0 = std::max(m0, a), m1 = std::max(m1, b);
        const double ta = times[(l * 2) * R + r], tb = times[(l * 2 + 1) * R + r];
        s0 += ta, s1 += tb, x0 = std::max(x0, ta), x1 = std::max(x1, tb);
      }
      ir0 += m0 / (n0 / R), ir1 += m1 / (n1 / R), tr0 += x0 / (s0 / R), tr1 += x1 / (s1 / R);
      moves += stats[l * mc::kProbeNumStats + mc::kProbeStatMoves];
      reps_new += stats[l * mc::kProbeNumStats + mc::kProbeStatNewReplicas];
      blocked += stats[l * mc::kProbeNumStats + mc::kProbeStatWindowBlocked];
    }
    std::printf("| %s | %d | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) | %.0f (%.0f) | %.3f -> %.3f | "
                "%.3f -> %.3f | %.2f | %.2f | %.2f |\n",
                w.name.c_str(), w.cfg.num_slots / w.cfg.num_ranks - w.cfg.num_experts / w.cfg.num_ranks, per_layer[0],
                cpu_layer[0], per_layer[1], cpu_layer[1], per_layer[2], cpu_layer[2], ent_mean, ent_max, ir0 / L,
                ir1 / L, tr0 / L, tr1 / L, moves / L, reps_new / L, blocked / L);
  }
  return 0;
}
