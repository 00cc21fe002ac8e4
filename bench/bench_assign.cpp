// CPU timing of the token -> replica assignment reference (moebal::core::assign_replicas).
// Usage: moebal_bench_assign [tokens=8192] [top_k=8] [reps=50]. Prints one markdown row per policy.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "assign_bench_case.h"

using namespace moebal;

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 8192;
  const int32_t K = argc > 2 ? std::atoi(argv[2]) : 8;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 50;
  const bench::AssignBenchCase c = bench::make_assign_case(T, K);
  std::vector<int32_t> out(c.ids.size());
  std::printf("| policy | tokens x top_k | median us | min us |\n|---|---|---|---|\n");
  for (auto p : {core::AssignPolicy::kRoundRobin, core::AssignPolicy::kHash, core::AssignPolicy::kLocality,
                 core::AssignPolicy::kQuota, core::AssignPolicy::kWeightedLocality}) {
    std::vector<double> us;
    for (int r = 0; r < reps + 3; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      core::assign_replicas(c.ids.data(), c.src.data(), T, K, core::replica_table(c.placement, 0), p, c.quota.data(),
                            c.weights.data(), out.data());
      const auto t1 = std::chrono::steady_clock::now();
      if (r >= 3) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(us.begin(), us.end());
    std::printf("| %s | %lld x %d | %.1f | %.1f |\n", core::assign_policy_name(p), static_cast<long long>(T), K,
                us[us.size() / 2], us.front());
  }
  return 0;
}
