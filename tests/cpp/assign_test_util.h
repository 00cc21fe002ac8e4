// Random placements, routings and quotas shared by the CPU and CUDA assignment tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "moebal/core/assign.h"
#include "moebal/core/placement.h"

namespace moebal::test {

struct AssignCase {
  core::Placement placement;  // one layer
  int64_t num_tokens = 0;
  int32_t top_k = 1;
  std::vector<int32_t> ids;   // [T, K], distinct per token, Zipf-skewed, some -1 padding
  std::vector<int32_t> src;   // [T]
  std::vector<int32_t> quota;    // [G, E, G]
  std::vector<int32_t> weights;  // [S]
};

inline int32_t uniform_int(std::mt19937_64& rng, int32_t lo, int32_t hi) {  // [lo, hi]
  return lo + static_cast<int32_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
}

/// A random layout and placement: every expert has a copy, the spare slots hold random extra copies.
inline core::Placement random_placement(std::mt19937_64& rng, int32_t E, int32_t G, int32_t N, int32_t spg) {
  const int32_t S = G * spg;
  std::vector<int32_t> phy(S);
  for (int32_t s = 0; s < S; ++s) phy[s] = s < E ? s : uniform_int(rng, 0, E - 1);
  std::shuffle(phy.begin(), phy.end(), rng);
  return core::Placement::from_phy2log(1, E, S, G, N, phy);
}

/// Skewed routing: expert popularity ~ u^skew (a power law), ids distinct within a token.
inline AssignCase random_case(std::mt19937_64& rng, int64_t T, int32_t K, int32_t E, int32_t G, int32_t N,
                              int32_t spg, double skew = 3.0, double pad_rate = 0.02) {
  AssignCase c;
  c.placement = random_placement(rng, E, G, N, spg);
  c.num_tokens = T;
  c.top_k = std::min(K, E);
  K = c.top_k;
  c.ids.resize(static_cast<size_t>(T) * K);
  c.src.resize(T);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t t = 0; t < T; ++t) {
    c.src[t] = uniform_int(rng, 0, G - 1);
    for (int32_t k = 0; k < K; ++k) {
      int32_t e;
      bool dup;
      do {
        e = std::min(E - 1, static_cast<int32_t>(E * std::pow(u(rng), skew)));
        dup = false;
        for (int32_t j = 0; j < k; ++j) dup |= c.ids[t * K + j] == e;
      } while (dup);
      c.ids[t * K + k] = e;
    }
    for (int32_t k = 0; k < K; ++k)
      if (u(rng) < pad_rate) c.ids[t * K + k] = -1;
  }
  // Quota: a random share (50..110%) of each (source, expert) demand, spread over GPUs holding the expert.
  const int32_t S = c.placement.num_slots;
  c.quota.assign(static_cast<size_t>(G) * E * G, 0);
  std::vector<int32_t> demand(static_cast<size_t>(G) * E, 0);
  for (int64_t i = 0; i < T * K; ++i)
    if (c.ids[i] >= 0) ++demand[static_cast<size_t>(c.src[i / K]) * E + c.ids[i]];
  for (int32_t r = 0; r < G; ++r)
    for (int32_t e = 0; e < E; ++e) {
      int32_t left = static_cast<int32_t>(std::lround(demand[static_cast<size_t>(r) * E + e] * (0.5 + 0.6 * u(rng))));
      const int32_t n = c.placement.copies(0, e);
      while (left > 0) {
        const int32_t s = c.placement.slot_of(0, e, uniform_int(rng, 0, n - 1));
        const int32_t take = uniform_int(rng, 1, left);
        c.quota[(static_cast<size_t>(r) * E + e) * G + c.placement.gpu_of_slot(s)] += take;
        left -= take;
      }
    }
  c.weights.resize(S);
  for (auto& w : c.weights) w = uniform_int(rng, 1, 1024);
  return c;
}

}  // namespace moebal::test
