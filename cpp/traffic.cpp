#include "moebal/core/traffic.h"

#include <algorithm>
#include <cmath>

#include "moebal/core/error.h"
#include "moebal/core/metrics.h"

namespace moebal::core {

A2ABytes a2a_bytes(const int32_t* slots, const int32_t* src, int64_t T, int32_t K, int32_t S, int32_t G,
                   int32_t N, int64_t token_bytes) {
  check_layout(1, S, G, N);
  MOEBAL_CHECK_ARG(T >= 0 && K >= 1, "a2a_bytes: need num_tokens >= 0 and top_k >= 1, got ", T, ", ", K);
  MOEBAL_CHECK_ARG(token_bytes > 0, "a2a_bytes: token_bytes must be > 0, got ", token_bytes);
  const int32_t spg = S / G, gpn = G / N;
  A2ABytes b;
  std::vector<int32_t> dst;
  dst.reserve(K);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t g = src[t];
    MOEBAL_CHECK_ARG(g >= 0 && g < G, "a2a_bytes: src_rank of token ", t, " is ", g, " outside [0, ", G, ")");
    dst.clear();
    for (int32_t k = 0; k < K; ++k) {
      const int32_t s = slots[t * K + k];
      if (s < 0) continue;
      MOEBAL_CHECK_ARG(s < S, "a2a_bytes: slot ", s, " of token ", t, " is >= num_slots (", S, ")");
      const int32_t d = s / spg;
      if (d == g) continue;
      (d / gpn == g / gpn ? b.pairs_intra : b.pairs_cross) += 1;
      if (std::find(dst.begin(), dst.end(), d) == dst.end()) dst.push_back(d);
    }
    std::sort(dst.begin(), dst.end());  // groups destinations by node
    for (size_t i = 0; i < dst.size(); ++i) {
      const int32_t d = dst[i], node = d / gpn;
      if (node == g / gpn) {
        ++b.flat_intra;
        ++b.hier_intra;
        continue;
      }
      ++b.flat_cross;
      if (i == 0 || dst[i - 1] / gpn != node) ++b.hier_cross;  // first destination on this node
      if (d != node * gpn + g % gpn) ++b.hier_intra;            // fan-out from the peer GPU
    }
  }
  const int64_t f = 2 * token_bytes;  // dispatch + combine
  for (int64_t* v : {&b.pairs_intra, &b.pairs_cross, &b.flat_intra, &b.flat_cross, &b.hier_intra, &b.hier_cross})
    *v *= f;
  return b;
}

std::vector<double> assigned_gpu_tokens(const int32_t* slots, int64_t n, int32_t S, int32_t G) {
  check_layout(1, S, G, 1);
  std::vector<double> out(G, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    if (slots[i] < 0) continue;
    MOEBAL_CHECK_ARG(slots[i] < S, "assigned_gpu_tokens: slot ", slots[i], " >= num_slots (", S, ")");
    out[slots[i] / (S / G)] += 1.0;
  }
  return out;
}

std::vector<int32_t> load_slot_weights(const LoadMatrix& loads, const Placement& p) {
  const std::vector<double> g = gpu_loads(loads, p);
  std::vector<int32_t> w(static_cast<size_t>(p.num_layers) * p.num_slots);
  for (int32_t l = 0; l < p.num_layers; ++l) {
    const double* row = g.data() + static_cast<size_t>(l) * p.num_gpus;
    double lo = 0;
    for (int32_t i = 0; i < p.num_gpus; ++i)
      if (row[i] > 0 && (lo == 0 || row[i] < lo)) lo = row[i];
    for (int32_t s = 0; s < p.num_slots; ++s) {
      const double load = row[p.gpu_of_slot(s)];
      const double v = load > 0 ? std::round(1024.0 * lo / load) : 1024.0;
      w[static_cast<size_t>(l) * p.num_slots + s] = static_cast<int32_t>(std::clamp(v, 1.0, 1024.0));
    }
  }
  return w;
}

std::vector<LayerTraffic> trace_traffic(const RoutingTrace& trace, const Placement& p, AssignPolicy policy,
                                        int64_t token_bytes, const std::vector<int32_t>& slot_weights) {
  p.validate();
  MOEBAL_CHECK_ARG(trace.num_layers == p.num_layers && trace.num_experts == p.num_experts,
                   "trace_traffic: trace has ", trace.num_layers, " layers x ", trace.num_experts,
                   " experts but the placement ", p.num_layers, " x ", p.num_experts);
  MOEBAL_CHECK_ARG(policy != AssignPolicy::kQuota,
                   "trace_traffic: the quota policy needs per-layer quotas; call assign_replicas per layer");
  MOEBAL_CHECK_ARG(slot_weights.empty() || slot_weights.size() == static_cast<size_t>(p.num_layers) * p.num_slots,
                   "trace_traffic: slot_weights must be empty or [", p.num_layers, ", ", p.num_slots, "], got ",
                   slot_weights.size(), " values");
  std::vector<int32_t> src(trace.src_rank);
  if (src.empty()) src.assign(trace.num_tokens, 0);
  std::vector<int32_t> w = slot_weights;
  if (w.empty() && policy == AssignPolicy::kWeightedLocality) w = load_slot_weights(trace.loads(), p);
  const int64_t T = trace.num_tokens, K = trace.top_k;
  std::vector<int32_t> slots(static_cast<size_t>(T * K));
  std::vector<LayerTraffic> out(p.num_layers);
  for (int32_t l = 0; l < p.num_layers; ++l) {
    const int32_t* ids = trace.topk_ids.data() + static_cast<size_t>(l) * T * K;
    assign_replicas(ids, src.data(), T, static_cast<int32_t>(K), replica_table(p, l), policy, nullptr,
                    w.empty() ? nullptr : w.data() + static_cast<size_t>(l) * p.num_slots, slots.data());
    out[l].bytes = a2a_bytes(slots.data(), src.data(), T, static_cast<int32_t>(K), p.num_slots, p.num_gpus,
                             p.num_nodes, token_bytes);
    out[l].gpu_tokens = assigned_gpu_tokens(slots.data(), T * K, p.num_slots, p.num_gpus);
    out[l].imbalance = imbalance_ratio(out[l].gpu_tokens.data(), p.num_gpus);
  }
  return out;
}

}  // namespace moebal::core
