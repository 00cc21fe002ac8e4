// Placement metrics and the lower bound.
//
// Lower bound (layer_lower_bound). Setting: one layer, loads w_e >= 0, M slots on P GPUs with
// k = M / P slots each; every expert e gets c_e >= 1 copies (sum c_e = M), each carrying w_e / c_e;
// the cost of a GPU is the sum of its copies' loads. OPT = min over placements of the busiest GPU.
// domain_lower_bound returns the maximum of three quantities, each <= OPT:
//  (1) W / P with W = sum w_e: copies split each w_e exactly, so the P GPU loads sum to W and the
//      largest is at least their mean.
//  (2) T* = min over count vectors c of max_e w_e / c_e. Every placement has some count vector c and
//      the GPU holding the copy with the largest w_e / c_e carries at least that much, so OPT >= T*.
//      detail::greedy_counts without a cap computes T* exactly (it is the classical greedy for
//      min-max apportionment: adding a copy to any expert other than the current argmax cannot lower
//      the maximum, so some optimal vector agrees with every greedy step).
//  (3) Only when M == n (no copies, items fixed): a cardinality bound. Sort loads p_1 >= ... >= p_n.
//      For any j, let the bins (GPUs) that hold at least one of the j largest items be B_1..B_m;
//      ceil(j / k) <= m <= min(j, P). They hold m*k items: the j top items and m*k - j others, each of
//      the others at least as large as the smallest items, so their total is at least
//      S_j + s(m*k - j) where S_j = p_1 + ... + p_j and s(t) = sum of the t smallest loads (t <= n - j
//      because m <= P). Their busiest bin is at least the average: >= min over feasible m of
//      (S_j + s(m*k - j)) / m. The bound is the maximum over j. (j = n, m = P gives (1); j = 1 gives
//      p_1 + (k - 1) p_n.)
// Group constraint (num_groups % num_nodes == 0, num_nodes > 1): a placement that keeps every group
// on one node is, per node, a placement of the node's experts into its M / N slots on its P / N GPUs,
// so its busiest GPU is at least max_node domain_lower_bound(node's experts). Minimising that over all
// group -> node assignments (exact DP, detail::best_group_assignment) bounds every such placement.
// The result is max(global bound, that DP value); when the DP is too large only the global bound is
// used. Both are valid because a group-constrained placement is also an unconstrained one.
// Time lower bound (layer_time_lower_bound). Roofline copies: a copy with n > 0 tokens costs
// s_g * max(a, b n) on GPU g, an empty copy 0; loads split evenly over copies. Let x_g be GPU g's
// unscaled work (sum of max(a, b n) over its copies), so its time is s_g x_g <= T for the optimum T.
// Let n+ experts have tokens. At most Z = M - n+ slots can hold empty copies when some expert is
// empty (its copies cost nothing), else Z = 0. domain_time_bound returns the maximum of:
//  (1) U_min / sum_g 1/s_g. Counts c give total work U(c) = sum over non-empty e of
//      max(c_e a, b w_e) (c_e copies of w_e / c_e tokens each), and sum_g x_g = U(c) with
//      x_g <= T / s_g, so T >= U(c) / sum_g 1/s_g. U is minimised over counts exactly: with an empty
//      expert the extra copies can go to it at no cost (U_min = sum max(a, b w_e)); otherwise the
//      R = M - n extra copies take the cheapest increments, each expert's increments being
//      non-decreasing (0 while (c + 1) a <= b w_e, then one partial step (q + 1) a - b w_e, then a).
//  (2) For the j slowest GPUs: they hold j k slots, at least j k - Z of them non-empty copies of
//      cost >= a, so sum of their x_g >= a (j k - Z) and T >= a (j k - Z) / sum_{j slowest} 1/s_g.
//      (j = 1 without empty experts: the slowest GPU runs k weight reads.)
//  (3) The copy with the most tokens has >= T* tokens (T* = min over counts of max_e w_e / c_e, as
//      in the token bound); its GPU also holds k - 1 other copies, >= k - 1 - Z of them non-empty:
//      T >= s_min (max(a, b T*) + a max(0, k - 1 - Z)).
// Group constraint: every node n is a domain of its groups' experts, M / N slots and its own GPUs'
// slowdowns, so T >= max_n domain_time_bound(node n); the minimum of that over group -> node
// assignments (DP over subsets of groups, nodes taken in order) bounds every group-keeping
// placement. As for tokens, the result is the maximum of that and the unconstrained bound.
#include "moebal/core/plan_metrics.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "moebal/core/error.h"
#include "moebal/core/metrics.h"
#include "solver_detail.h"

namespace moebal::core {
namespace detail {

double sorted_lower_bound(const double* p, int32_t n, double W, int32_t M, int32_t P) {
  double lb = W / P;
  // (2): the greedy only ever gives the R extra copies to the R + 1 largest loads (see
  // greedy_counts), and every other expert keeps one copy of at most p[R + 1].
  const int32_t R = M - n, m = std::min(n, R + 1);
  if (R > 0) {
    thread_local std::vector<double> cnt;
    cnt.assign(m, 1.0);
    for (int32_t r = 0; r < R; ++r) {
      int32_t best = 0;
      for (int32_t i = 1; i < m; ++i)  // p[i] / cnt[i] > p[best] / cnt[best], without dividing
        if (p[i] * cnt[best] > p[best] * cnt[i]) best = i;
      cnt[best] += 1.0;
    }
    for (int32_t i = 0; i < m; ++i) lb = std::max(lb, p[i] / cnt[i]);
    if (m < n) lb = std::max(lb, p[m]);
  } else {
    lb = std::max(lb, p[0]);
  }
  if (M == n) {  // (3)
    const int32_t k = M / P;
    std::vector<double> pre(n + 1, 0.0), suf(n + 1, 0.0);  // suf[t] = sum of the t smallest
    for (int32_t i = 0; i < n; ++i) pre[i + 1] = pre[i] + p[i];
    for (int32_t t = 1; t <= n; ++t) suf[t] = suf[t - 1] + p[n - t];
    for (int32_t j = 1; j <= n; ++j) {
      double bj = std::numeric_limits<double>::infinity();
      for (int32_t mm = (j + k - 1) / k; mm <= std::min(j, P); ++mm) {
        const int32_t others = mm * k - j;
        if (others > n - j) continue;
        bj = std::min(bj, (pre[j] + suf[others]) / mm);
      }
      if (std::isfinite(bj)) lb = std::max(lb, bj);
    }
  }
  return lb;
}

double domain_lower_bound(const double* w, int32_t n, int32_t M, int32_t P) {
  std::vector<double> p(w, w + n);
  std::sort(p.begin(), p.end(), std::greater<double>());
  double W = 0;
  for (int32_t i = 0; i < n; ++i) W += w[i];
  return sorted_lower_bound(p.data(), n, W, M, P);
}


namespace {

// Bound (1)-(3) above for one domain: loads w [n], M slots on P GPUs with slowdowns s [P].
double domain_time_bound(const double* w, int32_t n, int32_t M, int32_t P, double a, double b,
                         const double* s) {
  const int32_t k = M / P;
  std::vector<double> slow(s, s + P);
  std::sort(slow.begin(), slow.end(), std::greater<double>());
  int32_t nonempty = 0;
  double base = 0;
  for (int32_t e = 0; e < n; ++e)
    if (w[e] > 0) {
      ++nonempty;
      base += std::max(a, b * w[e]);
    }
  if (nonempty == 0) return 0.0;
  const int64_t Z = nonempty < n ? M - nonempty : 0;
  double U = base;
  if (Z == 0 && M > n && a > 0) {
    // Free increments first (they cost nothing), then the cheapest partial steps, then a each.
    double free = 0;
    std::vector<double> partial(n);
    for (int32_t e = 0; e < n; ++e) {
      const double q = std::floor(b * w[e] / a);
      free += std::max(0.0, q - 1);
      partial[e] = (std::max(1.0, q) + 1) * a - std::max(a, b * w[e]);
    }
    const double left = static_cast<double>(M - n) - free;
    if (left > 0) {
      std::sort(partial.begin(), partial.end());
      const int64_t take = std::min<int64_t>(static_cast<int64_t>(left), n);
      for (int64_t i = 0; i < take; ++i) U += partial[i];
      U += (left - static_cast<double>(take)) * a;
    }
  }
  double inv = 0, lb = 0;
  for (int32_t j = 1; j <= P; ++j) {
    inv += 1.0 / slow[j - 1];
    lb = std::max(lb, a * static_cast<double>(std::max<int64_t>(0, static_cast<int64_t>(j) * k - Z)) / inv);
  }
  lb = std::max(lb, U / inv);
  std::vector<int32_t> cnt(n);
  greedy_counts(w, n, M, 0, cnt.data());
  double tstar = 0;
  for (int32_t e = 0; e < n; ++e) tstar = std::max(tstar, w[e] / cnt[e]);
  if (tstar > 0)
    lb = std::max(lb, slow.back() * (std::max(a, b * tstar) +
                                     a * static_cast<double>(std::max<int64_t>(0, k - 1 - Z))));
  return lb;
}

}  // namespace

}  // namespace detail

double layer_lower_bound(const double* w, int32_t E, int32_t S, int32_t G, int32_t N, int32_t groups) {
  check_layout(E, S, G, N);
  MOEBAL_CHECK_ARG(groups > 0, "lower bound: num_groups must be > 0, got ", groups);
  for (int32_t e = 0; e < E; ++e)
    MOEBAL_CHECK_ARG(std::isfinite(w[e]) && w[e] >= 0, "lower bound: load of expert ", e,
                     " must be finite and >= 0, got ", w[e]);
  double lb = detail::domain_lower_bound(w, E, S, G);
  if (N > 1 && groups % N == 0) {
    MOEBAL_CHECK_ARG(E % groups == 0, "lower bound: num_experts (", E,
                     ") must be divisible by num_groups (", groups, ")");
    std::vector<std::vector<int32_t>> ng;
    double b = 0;
    if (detail::best_group_assignment(w, E, groups, N, S / N, G / N, &ng, &b)) lb = std::max(lb, b);
  }
  return lb;
}

std::vector<double> lower_bounds(const LoadMatrix& loads, int32_t S, int32_t G, int32_t N, int32_t groups) {
  loads.validate();
  std::vector<double> out(loads.num_layers);
  for (int32_t l = 0; l < loads.num_layers; ++l)
    out[l] = layer_lower_bound(loads.row(l), loads.num_experts, S, G, N, groups);
  return out;
}


double layer_time_lower_bound(const double* w, int32_t E, int32_t S, int32_t G, int32_t N,
                              int32_t groups, double a, double b, const double* slowdown) {
  check_layout(E, S, G, N);
  MOEBAL_CHECK_ARG(groups > 0, "time lower bound: num_groups must be > 0, got ", groups);
  MOEBAL_CHECK_ARG(std::isfinite(a) && a >= 0, "time lower bound: read_us must be finite and >= 0, got ", a);
  MOEBAL_CHECK_ARG(std::isfinite(b) && b >= 0, "time lower bound: us_per_token must be finite and >= 0, got ", b);
  MOEBAL_CHECK_ARG(slowdown != nullptr, "time lower bound: slowdown is missing");
  for (int32_t g = 0; g < G; ++g)
    MOEBAL_CHECK_ARG(std::isfinite(slowdown[g]) && slowdown[g] > 0, "time lower bound: slowdown of GPU ",
                     g, " must be finite and > 0, got ", slowdown[g]);
  for (int32_t e = 0; e < E; ++e)
    MOEBAL_CHECK_ARG(std::isfinite(w[e]) && w[e] >= 0, "time lower bound: load of expert ", e,
                     " must be finite and >= 0, got ", w[e]);
  double lb = detail::domain_time_bound(w, E, S, G, a, b, slowdown);
  if (!(N > 1 && groups % N == 0)) return lb;
  MOEBAL_CHECK_ARG(E % groups == 0, "time lower bound: num_experts (", E,
                   ") must be divisible by num_groups (", groups, ")");
  const int32_t per = groups / N, gsize = E / groups, Pn = G / N, Sn = S / N;
  if (groups > 16) return lb;
  std::vector<uint32_t> subsets;
  for (uint32_t m = (1u << per) - 1; m < (1u << groups);) {  // Gosper: next subset of `per` groups
    subsets.push_back(m);
    const uint32_t c = m & (~m + 1u), r = m + c;
    if (r == 0) break;
    m = (((r ^ m) >> 2) / c) | r;
  }
  if ((static_cast<double>(subsets.size()) * (1u << groups)) > double(1 << 22)) return lb;
  // cost[node][i]: bound of node `node` holding subset i.
  std::vector<double> cost(static_cast<size_t>(N) * subsets.size()), wn(static_cast<size_t>(per) * gsize);
  for (int32_t node = 0; node < N; ++node)
    for (size_t i = 0; i < subsets.size(); ++i) {
      int32_t len = 0;
      for (int32_t g = 0; g < groups; ++g)
        if (subsets[i] >> g & 1u)
          for (int32_t j = 0; j < gsize; ++j) wn[len++] = w[g * gsize + j];
      cost[node * subsets.size() + i] =
          detail::domain_time_bound(wn.data(), len, Sn, Pn, a, b, slowdown + node * Pn);
    }
  // f[mask]: best bottleneck placing the groups of mask on nodes 0 .. popcount(mask) / per - 1.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> f(1u << groups, inf);
  f[0] = 0;
  for (uint32_t mask = 0; mask < (1u << groups); ++mask) {
    if (!std::isfinite(f[mask])) continue;
    int32_t pc = 0;
    for (uint32_t x = mask; x; x &= x - 1) ++pc;
    const int32_t node = pc / per;
    if (node >= N) continue;
    for (size_t i = 0; i < subsets.size(); ++i) {
      if (subsets[i] & mask) continue;
      const double v = std::max(f[mask], cost[node * subsets.size() + i]);
      double& dst = f[mask | subsets[i]];
      if (v < dst) dst = v;
    }
  }
  return std::max(lb, f[(1u << groups) - 1]);
}

std::vector<double> time_lower_bounds(const LoadMatrix& loads, int32_t S, int32_t G, int32_t N,
                                      int32_t groups, double a, double b,
                                      const std::vector<double>& slowdown) {
  loads.validate();
  MOEBAL_CHECK_ARG(slowdown.size() == static_cast<size_t>(G), "time lower bound: need one slowdown per GPU (",
                   G, "), got ", slowdown.size());
  std::vector<double> out(loads.num_layers);
  for (int32_t l = 0; l < loads.num_layers; ++l)
    out[l] = layer_time_lower_bound(loads.row(l), loads.num_experts, S, G, N, groups, a, b, slowdown.data());
  return out;
}

static void check_models(const Placement& p, const std::vector<PerfModel>& models) {
  MOEBAL_CHECK_ARG(models.size() == static_cast<size_t>(p.num_gpus), "metrics: need one perf model "
                   "per GPU (", p.num_gpus, "), got ", models.size());
  for (size_t g = 0; g < models.size(); ++g)
    MOEBAL_CHECK_ARG(!models[g].knot_tokens().empty(), "metrics: perf model of GPU ", g, " is empty");
}

std::vector<double> gpu_times(const LoadMatrix& loads, const Placement& p,
                              const std::vector<PerfModel>& models) {
  MOEBAL_CHECK_ARG(loads.num_layers == p.num_layers && loads.num_experts == p.num_experts,
                   "metrics: loads are ", loads.num_layers, " x ", loads.num_experts,
                   " but the placement is ", p.num_layers, " x ", p.num_experts);
  check_models(p, models);
  std::vector<double> out(static_cast<size_t>(p.num_layers) * p.num_gpus, 0.0);
  for (int32_t l = 0; l < p.num_layers; ++l)
    for (int32_t s = 0; s < p.num_slots; ++s) {
      const int32_t e = p.expert_of(l, s), g = p.gpu_of_slot(s);
      out[static_cast<size_t>(l) * p.num_gpus + g] += models[g].time_us(loads.at(l, e) / p.copies(l, e));
    }
  return out;
}

std::vector<double> layer_step_times(const LoadMatrix& loads, const Placement& p,
                                     const std::vector<PerfModel>& models) {
  const std::vector<double> t = gpu_times(loads, p, models);
  std::vector<double> out(p.num_layers);
  for (int32_t l = 0; l < p.num_layers; ++l)
    out[l] = *std::max_element(t.begin() + static_cast<size_t>(l) * p.num_gpus,
                               t.begin() + static_cast<size_t>(l + 1) * p.num_gpus);
  return out;
}

int64_t extra_expert_bytes(const Placement& p, const ExpertShape& shape) {
  shape.validate();
  return static_cast<int64_t>(p.num_slots - p.num_experts) * p.num_layers * shape.weight_bytes();
}

PlanMetrics evaluate_plan(const LoadMatrix& loads, const Placement& p,
                          const std::vector<PerfModel>& models, const ExpertShape* shape,
                          int32_t num_groups) {
  p.validate();
  const std::vector<double> g = gpu_loads(loads, p);
  PlanMetrics r;
  r.layer_lower_bound = lower_bounds(loads, p.num_slots, p.num_gpus, p.num_nodes, num_groups);
  double sum_max = 0, sum_lb = 0;
  for (int32_t l = 0; l < p.num_layers; ++l) {
    const double* row = g.data() + static_cast<size_t>(l) * p.num_gpus;
    r.layer_ir.push_back(imbalance_ratio(row, p.num_gpus));
    r.layer_max_load.push_back(*std::max_element(row, row + p.num_gpus));
    sum_max += r.layer_max_load.back();
    sum_lb += r.layer_lower_bound[l];
  }
  r.mean_ir = std::accumulate(r.layer_ir.begin(), r.layer_ir.end(), 0.0) / p.num_layers;
  r.max_ir = *std::max_element(r.layer_ir.begin(), r.layer_ir.end());
  r.gap = sum_lb > 0 ? sum_max / sum_lb - 1.0 : 0.0;
  if (!models.empty()) {
    r.layer_step_us = layer_step_times(loads, p, models);
    r.step_us = std::accumulate(r.layer_step_us.begin(), r.layer_step_us.end(), 0.0);
  }
  r.extra_copies = static_cast<int64_t>(p.num_slots - p.num_experts) * p.num_layers;
  if (shape) r.extra_bytes = extra_expert_bytes(p, *shape);
  return r;
}

}  // namespace moebal::core
