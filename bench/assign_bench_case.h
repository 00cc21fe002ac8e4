// The assignment benchmark input shared by bench_assign.cpp (CPU) and bench_assign_cuda.cu (GPU):
// a DeepSeek-V3-sized layer (256 experts, top-8) on 32 GPUs x 4 nodes with one spare slot per GPU
// (288 slots; the spare slots copy the most loaded experts), Zipf(1.0)-skewed routing, a quota that
// covers 90% of every (source, expert) demand, and GRACE-style slot weights. Fixed seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "moebal/core/assign.h"
#include "moebal/core/placement.h"

namespace moebal::bench {

struct AssignBenchCase {
  core::Placement placement;
  int64_t num_tokens;
  int32_t top_k;
  std::vector<int32_t> ids, src, quota, weights;
};

inline AssignBenchCase make_assign_case(int64_t T, int32_t K, int32_t E = 256, int32_t G = 32, int32_t N = 4,
                                        int32_t spare_per_gpu = 1) {
  std::mt19937_64 rng(2026);
  AssignBenchCase c;
  c.num_tokens = T;
  c.top_k = K;
  // Zipf popularity over a random permutation of experts.
  std::vector<double> pop(E);
  std::vector<int32_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int32_t r = 0; r < E; ++r) pop[order[r]] = 1.0 / (r + 1);
  std::discrete_distribution<int32_t> pick(pop.begin(), pop.end());
  c.ids.resize(static_cast<size_t>(T) * K);
  c.src.resize(T);
  std::vector<int32_t> count(E, 0);
  for (int64_t t = 0; t < T; ++t) {
    c.src[t] = static_cast<int32_t>(rng() % G);
    for (int32_t k = 0; k < K; ++k) {
      int32_t e;
      do {
        e = pick(rng);
      } while (std::find(c.ids.begin() + t * K, c.ids.begin() + t * K + k, e) != c.ids.begin() + t * K + k);
      c.ids[t * K + k] = e;
      ++count[e];
    }
  }
  // Contiguous primaries, spare slots (the last of each GPU) take the hottest experts, round-robin.
  const int32_t spg = E / G + spare_per_gpu, S = spg * G;
  std::vector<int32_t> hot(E);
  std::iota(hot.begin(), hot.end(), 0);
  std::sort(hot.begin(), hot.end(), [&](int32_t a, int32_t b) { return count[a] > count[b]; });
  std::vector<int32_t> phy(S);
  int32_t next = 0, h = 0;
  for (int32_t g = 0; g < G; ++g)
    for (int32_t j = 0; j < spg; ++j) phy[g * spg + j] = j < E / G ? next++ : hot[h++ % E];
  c.placement = core::Placement::from_phy2log(1, E, S, G, N, phy);
  c.quota.assign(static_cast<size_t>(G) * E * G, 0);
  std::vector<int32_t> demand(static_cast<size_t>(G) * E, 0);
  for (int64_t i = 0; i < T * K; ++i) ++demand[static_cast<size_t>(c.src[i / K]) * E + c.ids[i]];
  for (int32_t r = 0; r < G; ++r)
    for (int32_t e = 0; e < E; ++e) {
      const int32_t q = demand[static_cast<size_t>(r) * E + e] * 9 / 10, n = c.placement.copies(0, e);
      for (int32_t j = 0; j < q; ++j)  // spread over the copies
        c.quota[(static_cast<size_t>(r) * E + e) * G + c.placement.gpu_of_slot(c.placement.slot_of(0, e, j % n))] += 1;
    }
  c.weights.resize(S);
  for (auto& w : c.weights) w = 1 + static_cast<int32_t>(rng() % 1024);
  return c;
}

}  // namespace moebal::bench
