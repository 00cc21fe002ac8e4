// Wall time of a full DeepSeek-V3-sized placement plan (58 MoE layers, 256 experts, 288 slots,
// 32 GPUs, 4 nodes, 8 groups) for eplb, balanced and vibe on one CPU thread. Loads: Zipf(s) token
// counts in a random expert order per layer (fixed seed). Prints the median and min of repeated runs
// and the plan quality (mean IR, gap to the lower bound) so speed and quality are read together.
//
//   moebal_bench_solvers [--reps N] [--zipf S] [--layers L] [--slots S] [--gpus G] [--nodes N]
//                        [--groups K] [--experts E] [--only POLICY]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <time.h>

#include "moebal/core/plan_metrics.h"
#include "moebal/core/solvers.h"

using namespace moebal::core;

// CPU time of the calling thread (ms): unlike wall time it excludes time the thread spent
// descheduled, which matters on a shared machine.
static double thread_cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

int main(int argc, char** argv) {
  int reps = 21, L = 58, E = 256, S = 288, G = 32, N = 4, groups = 8;
  double zipf = 1.0;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--only") {
      only = argv[i + 1];
      continue;
    }
    const double v = std::atof(argv[i + 1]);
    if (a == "--reps") reps = static_cast<int>(v);
    else if (a == "--zipf") zipf = v;
    else if (a == "--layers") L = static_cast<int>(v);
    else if (a == "--experts") E = static_cast<int>(v);
    else if (a == "--slots") S = static_cast<int>(v);
    else if (a == "--gpus") G = static_cast<int>(v);
    else if (a == "--nodes") N = static_cast<int>(v);
    else if (a == "--groups") groups = static_cast<int>(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  std::mt19937 rng(2026);
  std::vector<double> w(static_cast<size_t>(L) * E);
  const double tokens = 8192.0 * 8;  // 8192 tokens x top-8 per layer
  for (int l = 0; l < L; ++l) {
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    double z = 0;
    for (int e = 0; e < E; ++e) z += 1.0 / std::pow(e + 1, zipf);
    for (int e = 0; e < E; ++e) w[static_cast<size_t>(l) * E + perm[e]] = std::round(tokens / z / std::pow(e + 1, zipf));
  }
  LoadMatrix m(L, E, w);
  // H100-like linear models with a 7% spread of per-GPU slowdowns (see bench/solvers.py).
  std::vector<PerfModel> models;
  std::uniform_real_distribution<double> slow(1.0, 1.07);
  for (int g = 0; g < G; ++g) models.push_back(PerfModel::linear(29.3, 0.139).scaled(slow(rng)));
  Topology topo(N, G / N, 450, 50, 55, models);
  PlanRequest req;
  req.loads = &m;
  req.num_slots = S;
  req.num_gpus = G;
  req.num_nodes = N;
  req.num_groups = groups;
  req.topology = &topo;
  std::printf("plan: %d layers, %d experts, %d slots, %d GPUs, %d nodes, %d groups, zipf %.2f, %d reps\n",
              L, E, S, G, N, groups, zipf, reps);
  std::printf("%-9s %10s %10s %10s %9s %8s %12s\n", "policy", "median_ms", "min_ms", "cpu_med_ms",
              "mean_IR", "gap", "step_us");
  for (const auto& pol : placement_policies()) {
    if (!only.empty() && only != pol.name) continue;
    std::vector<double> ms, cpu;
    Placement p = pol.fn(req);  // warm-up
    for (int r = 0; r < reps; ++r) {
      const double c0 = thread_cpu_ms();
      const auto t0 = std::chrono::steady_clock::now();
      p = pol.fn(req);
      const auto t1 = std::chrono::steady_clock::now();
      cpu.push_back(thread_cpu_ms() - c0);
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::sort(cpu.begin(), cpu.end());
    const PlanMetrics q = evaluate_plan(m, p, models, nullptr, groups);
    std::printf("%-9s %10.3f %10.3f %10.3f %9.4f %8.4f %12.1f\n", pol.name, ms[ms.size() / 2],
                ms.front(), cpu[cpu.size() / 2], q.mean_ir, q.gap, q.step_us);
  }
  return 0;
}
