#include "moebal/core/placement.h"

#include <algorithm>

#include "moebal/core/error.h"

namespace moebal::core {

void check_layout(int32_t num_experts, int32_t num_slots, int32_t num_gpus, int32_t num_nodes) {
  MOEBAL_CHECK_ARG(num_experts > 0, "placement: num_experts must be > 0, got ", num_experts);
  MOEBAL_CHECK_ARG(num_gpus > 0, "placement: num_gpus must be > 0, got ", num_gpus);
  MOEBAL_CHECK_ARG(num_nodes > 0, "placement: num_nodes must be > 0, got ", num_nodes);
  MOEBAL_CHECK_ARG(num_slots >= num_experts, "placement: num_slots (", num_slots,
                   ") must be >= num_experts (", num_experts, ") so every expert has a copy");
  MOEBAL_CHECK_ARG(num_slots % num_gpus == 0, "placement: num_slots (", num_slots,
                   ") must be divisible by num_gpus (", num_gpus, ")");
  MOEBAL_CHECK_ARG(num_gpus % num_nodes == 0, "placement: num_gpus (", num_gpus,
                   ") must be divisible by num_nodes (", num_nodes, ")");
}

Placement Placement::from_phy2log(int32_t L, int32_t E, int32_t S, int32_t G, int32_t N,
                                  std::vector<int32_t> phy2log, int32_t max_copies) {
  MOEBAL_CHECK_ARG(L > 0, "placement: num_layers must be > 0, got ", L);
  check_layout(E, S, G, N);
  MOEBAL_CHECK_ARG(phy2log.size() == static_cast<size_t>(L) * S, "placement: phy2log must have shape [",
                   L, ", ", S, "], got ", phy2log.size(), " values");
  MOEBAL_CHECK_ARG(max_copies >= 0, "placement: max_copies must be >= 0, got ", max_copies);
  Placement p;
  p.num_layers = L;
  p.num_experts = E;
  p.num_slots = S;
  p.num_gpus = G;
  p.num_nodes = N;
  p.phy2log = std::move(phy2log);
  p.logcnt.assign(static_cast<size_t>(L) * E, 0);
  for (int32_t l = 0; l < L; ++l)
    for (int32_t s = 0; s < S; ++s) {
      const int32_t e = p.phy2log[static_cast<size_t>(l) * S + s];
      MOEBAL_CHECK_ARG(e >= 0 && e < E, "placement: phy2log at layer ", l, ", slot ", s,
                       " holds expert ", e, " outside [0, ", E, ")");
      ++p.logcnt[static_cast<size_t>(l) * E + e];
    }
  const int32_t most = *std::max_element(p.logcnt.begin(), p.logcnt.end());
  MOEBAL_CHECK_ARG(max_copies == 0 || max_copies >= most, "placement: max_copies (", max_copies,
                   ") is smaller than the largest copy count (", most, ")");
  p.max_copies = max_copies == 0 ? most : max_copies;
  p.log2phy.assign(static_cast<size_t>(L) * E * p.max_copies, -1);
  std::vector<int32_t> fill(static_cast<size_t>(L) * E, 0);
  for (int32_t l = 0; l < L; ++l)
    for (int32_t s = 0; s < S; ++s) {
      const size_t le = static_cast<size_t>(l) * E + p.phy2log[static_cast<size_t>(l) * S + s];
      p.log2phy[le * p.max_copies + fill[le]++] = s;
    }
  p.validate();
  return p;
}

Placement Placement::contiguous(int32_t L, int32_t E, int32_t G, int32_t N) {
  MOEBAL_CHECK_ARG(L > 0, "placement: num_layers must be > 0, got ", L);
  check_layout(E, E, G, N);
  std::vector<int32_t> phy2log(static_cast<size_t>(L) * E);
  for (int32_t l = 0; l < L; ++l)
    for (int32_t e = 0; e < E; ++e) phy2log[static_cast<size_t>(l) * E + e] = e;
  return from_phy2log(L, E, E, G, N, std::move(phy2log));
}

void Placement::validate() const {
  MOEBAL_CHECK_ARG(num_layers > 0, "placement: num_layers must be > 0, got ", num_layers);
  check_layout(num_experts, num_slots, num_gpus, num_nodes);
  MOEBAL_CHECK_ARG(max_copies >= 1, "placement: max_copies must be >= 1, got ", max_copies);
  const size_t L = num_layers, E = num_experts, S = num_slots, C = max_copies;
  MOEBAL_CHECK_ARG(phy2log.size() == L * S, "placement: phy2log must have shape [", L, ", ", S,
                   "], got ", phy2log.size(), " values");
  MOEBAL_CHECK_ARG(logcnt.size() == L * E, "placement: logcnt must have shape [", L, ", ", E,
                   "], got ", logcnt.size(), " values");
  MOEBAL_CHECK_ARG(log2phy.size() == L * E * C, "placement: log2phy must have shape [", L, ", ", E,
                   ", ", C, "], got ", log2phy.size(), " values");
  std::vector<int32_t> seen(S);
  for (size_t l = 0; l < L; ++l) {
    std::fill(seen.begin(), seen.end(), 0);
    for (size_t e = 0; e < E; ++e) {
      const int32_t cnt = logcnt[l * E + e];
      MOEBAL_CHECK_ARG(cnt >= 1 && cnt <= max_copies, "placement: logcnt at layer ", l, ", expert ",
                       e, " is ", cnt, "; every expert needs between 1 and max_copies=", max_copies,
                       " copies");
      for (int32_t i = 0; i < max_copies; ++i) {
        const int32_t s = log2phy[(l * E + e) * C + i];
        if (i >= cnt) {
          MOEBAL_CHECK_ARG(s == -1, "placement: log2phy at layer ", l, ", expert ", e, ", copy ", i,
                           " must be -1 padding (logcnt=", cnt, "), got ", s);
          continue;
        }
        MOEBAL_CHECK_ARG(s >= 0 && s < num_slots, "placement: log2phy at layer ", l, ", expert ", e,
                         ", copy ", i, " names slot ", s, " outside [0, ", num_slots, ")");
        MOEBAL_CHECK_ARG(phy2log[l * S + s] == static_cast<int32_t>(e), "placement: log2phy at layer ",
                         l, " says slot ", s, " holds expert ", e, " but phy2log says ",
                         phy2log[l * S + s]);
        MOEBAL_CHECK_ARG(seen[s]++ == 0, "placement: slot ", s, " of layer ", l,
                         " is listed twice in log2phy");
      }
    }
    for (size_t s = 0; s < S; ++s)
      MOEBAL_CHECK_ARG(seen[s] == 1, "placement: slot ", s, " of layer ", l,
                       " is not listed in log2phy (phy2log and log2phy disagree)");
  }
}

}  // namespace moebal::core
