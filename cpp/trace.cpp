#include "moebal/core/trace.h"

#include <algorithm>
#include <cmath>

#include "moebal/core/error.h"

namespace moebal::core {

LoadMatrix::LoadMatrix(int32_t num_layers_, int32_t num_experts_, std::vector<double> loads_)
    : num_layers(num_layers_), num_experts(num_experts_), loads(std::move(loads_)) {
  validate();
}

void LoadMatrix::validate() const {
  MOEBAL_CHECK_ARG(num_layers > 0, "loads: num_layers must be > 0, got ", num_layers);
  MOEBAL_CHECK_ARG(num_experts > 0, "loads: num_experts must be > 0, got ", num_experts);
  const size_t want = static_cast<size_t>(num_layers) * num_experts;
  MOEBAL_CHECK_ARG(loads.size() == want, "loads: expected ", num_layers, " x ", num_experts, " = ",
                   want, " values, got ", loads.size());
  for (size_t i = 0; i < loads.size(); ++i) {
    MOEBAL_CHECK_ARG(std::isfinite(loads[i]), "loads: value at layer ", i / num_experts,
                     ", expert ", i % num_experts, " is not finite (", loads[i], ")");
    MOEBAL_CHECK_ARG(loads[i] >= 0.0, "loads: value at layer ", i / num_experts, ", expert ",
                     i % num_experts, " is negative (", loads[i], ")");
  }
}

RoutingTrace::RoutingTrace(int32_t L, int32_t T, int32_t K, int32_t E, std::vector<int32_t> ids,
                           std::vector<float> weights, std::vector<int32_t> ranks,
                           std::vector<int32_t> steps)
    : num_layers(L), num_tokens(T), top_k(K), num_experts(E), topk_ids(std::move(ids)),
      topk_weights(std::move(weights)), src_rank(std::move(ranks)), step(std::move(steps)) {
  validate();
}

void RoutingTrace::validate() const {
  MOEBAL_CHECK_ARG(num_layers > 0, "trace: num_layers must be > 0, got ", num_layers);
  MOEBAL_CHECK_ARG(num_tokens > 0, "trace: num_tokens must be > 0, got ", num_tokens);
  MOEBAL_CHECK_ARG(num_experts > 0, "trace: num_experts must be > 0, got ", num_experts);
  MOEBAL_CHECK_ARG(top_k > 0 && top_k <= num_experts, "trace: top_k must be in [1, num_experts=",
                   num_experts, "], got ", top_k);
  const size_t n = static_cast<size_t>(num_layers) * num_tokens * top_k;
  MOEBAL_CHECK_ARG(topk_ids.size() == n, "trace: topk_ids must have shape [", num_layers, ", ",
                   num_tokens, ", ", top_k, "] (", n, " values), got ", topk_ids.size());
  MOEBAL_CHECK_ARG(topk_weights.empty() || topk_weights.size() == n,
                   "trace: topk_weights must be empty or have the shape of topk_ids (", n,
                   " values), got ", topk_weights.size());
  MOEBAL_CHECK_ARG(src_rank.empty() || src_rank.size() == static_cast<size_t>(num_tokens),
                   "trace: src_rank must be empty or have num_tokens=", num_tokens,
                   " values, got ", src_rank.size());
  MOEBAL_CHECK_ARG(step.empty() || step.size() == static_cast<size_t>(num_tokens),
                   "trace: step must be empty or have num_tokens=", num_tokens, " values, got ",
                   step.size());
  for (size_t row = 0; row < n / top_k; ++row) {
    const int32_t* ids = topk_ids.data() + row * top_k;
    for (int32_t k = 0; k < top_k; ++k) {
      MOEBAL_CHECK_ARG(ids[k] >= 0 && ids[k] < num_experts, "trace: topk_ids at layer ",
                       row / num_tokens, ", token ", row % num_tokens, " holds expert id ", ids[k],
                       " outside [0, ", num_experts, ")");
      for (int32_t j = 0; j < k; ++j)
        MOEBAL_CHECK_ARG(ids[j] != ids[k], "trace: topk_ids at layer ", row / num_tokens,
                         ", token ", row % num_tokens, " repeats expert ", ids[k]);
    }
  }
  for (size_t i = 0; i < topk_weights.size(); ++i)
    MOEBAL_CHECK_ARG(std::isfinite(topk_weights[i]) && topk_weights[i] >= 0.f,
                     "trace: topk_weights[", i, "] must be finite and >= 0, got ", topk_weights[i]);
  for (size_t t = 0; t < src_rank.size(); ++t)
    MOEBAL_CHECK_ARG(src_rank[t] >= 0, "trace: src_rank of token ", t, " is negative (",
                     src_rank[t], ")");
  for (size_t t = 0; t < step.size(); ++t) {
    MOEBAL_CHECK_ARG(step[t] >= 0, "trace: step of token ", t, " is negative (", step[t], ")");
    MOEBAL_CHECK_ARG(t == 0 || step[t] >= step[t - 1], "trace: step ids must be non-decreasing; token ",
                     t, " has step ", step[t], " after ", step[t - 1]);
  }
}

int32_t RoutingTrace::num_steps() const {
  return step.empty() ? 1 : *std::max_element(step.begin(), step.end()) + 1;
}

int32_t RoutingTrace::num_ranks() const {
  return src_rank.empty() ? 1 : *std::max_element(src_rank.begin(), src_rank.end()) + 1;
}

LoadMatrix RoutingTrace::loads() const { return loads(0, num_steps()); }

LoadMatrix RoutingTrace::loads(int32_t step_begin, int32_t step_end) const {
  MOEBAL_CHECK_ARG(step_begin >= 0 && step_begin < step_end, "trace: bad step range [", step_begin,
                   ", ", step_end, ")");
  LoadMatrix m;
  m.num_layers = num_layers;
  m.num_experts = num_experts;
  m.loads.assign(static_cast<size_t>(num_layers) * num_experts, 0.0);
  for (int32_t l = 0; l < num_layers; ++l)
    for (int32_t t = 0; t < num_tokens; ++t) {
      const int32_t s = step.empty() ? 0 : step[t];
      if (s < step_begin || s >= step_end) continue;
      for (int32_t k = 0; k < top_k; ++k) m.loads[static_cast<size_t>(l) * num_experts + id(l, t, k)] += 1.0;
    }
  return m;
}

std::vector<double> RoutingTrace::step_loads() const {
  const int32_t S = num_steps();
  std::vector<double> out(static_cast<size_t>(S) * num_layers * num_experts, 0.0);
  for (int32_t l = 0; l < num_layers; ++l)
    for (int32_t t = 0; t < num_tokens; ++t) {
      const size_t s = step.empty() ? 0 : step[t];
      for (int32_t k = 0; k < top_k; ++k)
        out[(s * num_layers + l) * num_experts + id(l, t, k)] += 1.0;
    }
  return out;
}

std::vector<double> RoutingTrace::coactivation(int32_t layer) const {
  MOEBAL_CHECK_ARG(layer >= 0 && layer < num_layers, "trace: layer ", layer, " outside [0, ",
                   num_layers, ")");
  const size_t E = num_experts;
  std::vector<double> c(E * E, 0.0);
  for (int32_t t = 0; t < num_tokens; ++t)
    for (int32_t a = 0; a < top_k; ++a) {
      const int32_t i = id(layer, t, a);
      for (int32_t b = 0; b < top_k; ++b) c[i * E + id(layer, t, b)] += 1.0;
    }
  return c;
}

std::vector<double> RoutingTrace::rank_expert_counts(int32_t layer) const {
  MOEBAL_CHECK_ARG(layer >= 0 && layer < num_layers, "trace: layer ", layer, " outside [0, ",
                   num_layers, ")");
  const int32_t R = num_ranks();
  std::vector<double> c(static_cast<size_t>(R) * num_experts, 0.0);
  for (int32_t t = 0; t < num_tokens; ++t) {
    const size_t r = src_rank.empty() ? 0 : src_rank[t];
    for (int32_t k = 0; k < top_k; ++k) c[r * num_experts + id(layer, t, k)] += 1.0;
  }
  return c;
}

LoadMatrix sum_step_loads(int32_t num_steps, int32_t num_layers, int32_t num_experts,
                          const std::vector<double>& step_loads) {
  MOEBAL_CHECK_ARG(num_steps > 0, "step_loads: num_steps must be > 0, got ", num_steps);
  MOEBAL_CHECK_ARG(num_layers > 0 && num_experts > 0, "step_loads: layers and experts must be > 0");
  const size_t per = static_cast<size_t>(num_layers) * num_experts;
  MOEBAL_CHECK_ARG(step_loads.size() == per * num_steps, "step_loads: expected shape [", num_steps,
                   ", ", num_layers, ", ", num_experts, "], got ", step_loads.size(), " values");
  std::vector<double> sum(per, 0.0);
  for (size_t i = 0; i < step_loads.size(); ++i) {
    MOEBAL_CHECK_ARG(std::isfinite(step_loads[i]) && step_loads[i] >= 0.0, "step_loads: value at step ",
                     i / per, ", layer ", (i % per) / num_experts, ", expert ", i % num_experts,
                     " must be finite and >= 0, got ", step_loads[i]);
    sum[i % per] += step_loads[i];
  }
  return LoadMatrix(num_layers, num_experts, std::move(sum));
}

}  // namespace moebal::core
