// DeepSeek EPLB, written from its published description (deepseek-ai/EPLB README and the digest in
// shared/reference/seed-papers.md section 5.1). Semantics kept: pack sizes, visiting order, the
// lightest-pack-with-room rule, the identity shortcut when each pack takes one item, replication by
// the largest load per copy, and the replica-rank numbering of the output tables.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "moebal/core/error.h"
#include "moebal/core/solvers.h"
#include "solver_detail.h"

namespace moebal::core {
namespace detail {

void eplb_pack(const double* w, int32_t n, int32_t m, int32_t* pack, int32_t* rank) {
  const int32_t per = n / m;
  if (per == 1) {  // the original skips the greedy and keeps items in place
    for (int32_t i = 0; i < n; ++i) {
      pack[i] = i;
      rank[i] = 0;
    }
    return;
  }
  thread_local std::vector<int32_t> order;
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  // Descending weight, lower index first among equals (a total order, so std::sort is as stable
  // as a stable sort here and needs no buffer).
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  thread_local std::vector<double> pw;
  thread_local std::vector<int32_t> items;
  pw.assign(m, 0.0);
  items.assign(m, 0);
  // key[p] = pack weight, or +inf once the pack is full: the lightest pack with room is the first
  // minimum of key.
  if (m > 16) {
    // Many packs: a min-heap on (weight, pack index) gives the same choice (lightest, then lowest
    // index) in O(log m).
    thread_local std::vector<std::pair<double, int32_t>> heap;
    heap.clear();
    for (int32_t p = 0; p < m; ++p) heap.push_back({0.0, p});
    auto greater = [](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
      return a > b;
    };
    for (int32_t i : order) {
      std::pop_heap(heap.begin(), heap.end(), greater);
      const int32_t best = heap.back().second;
      heap.pop_back();
      pack[i] = best;
      rank[i] = items[best]++;
      pw[best] += w[i];
      if (items[best] < per) {
        heap.push_back({pw[best], best});
        std::push_heap(heap.begin(), heap.end(), greater);
      }
    }
    return;
  }
  thread_local std::vector<double> key;
  key.assign(m, 0.0);
  const double full = std::numeric_limits<double>::infinity();
  for (int32_t i : order) {
    int32_t best = 0;
    for (int32_t p = 1; p < m; ++p)
      if (key[p] < key[best]) best = p;
    pack[i] = best;
    rank[i] = items[best]++;
    pw[best] += w[i];
    key[best] = items[best] < per ? pw[best] : full;
  }
}

void eplb_replicate(const double* w, int32_t n, int32_t num_phy, int32_t* phy2log, int32_t* rank,
                    int32_t* cnt) {
  for (int32_t i = 0; i < n; ++i) {
    phy2log[i] = i;
    rank[i] = 0;
    cnt[i] = 1;
  }
  if (static_cast<int64_t>(num_phy - n) * n > 2048) {
    // Max-heap on (w / cnt, -index): the same pick as the scan below (largest ratio, first index
    // among equals), in O(log n) per copy.
    thread_local std::vector<std::pair<double, int32_t>> heap;
    heap.clear();
    for (int32_t i = 0; i < n; ++i) heap.push_back({w[i] / cnt[i], -i});
    std::make_heap(heap.begin(), heap.end());
    for (int32_t r = n; r < num_phy; ++r) {
      std::pop_heap(heap.begin(), heap.end());
      const int32_t best = -heap.back().second;
      phy2log[r] = best;
      rank[r] = cnt[best]++;
      heap.back() = {w[best] / cnt[best], -best};
      std::push_heap(heap.begin(), heap.end());
    }
    return;
  }
  for (int32_t r = n; r < num_phy; ++r) {
    int32_t best = 0;
    double bv = w[0] / cnt[0];
    for (int32_t i = 1; i < n; ++i) {
      const double v = w[i] / cnt[i];
      if (v > bv) {  // strict: the first maximum wins, like argmax
        bv = v;
        best = i;
      }
    }
    phy2log[r] = best;
    rank[r] = cnt[best]++;
  }
}

void eplb_layer(const double* w, int32_t E, int32_t R, int32_t groups, int32_t nodes, int32_t gpus,
                bool hierarchical, int32_t* phy2log, int32_t* phyrank, int32_t* logcnt) {
  if (!hierarchical) {
    groups = 1;
    nodes = 1;
  }
  const int32_t group_size = E / groups, groups_per_node = groups / nodes;
  const int32_t experts_per_node = E / nodes, phy_per_node = R / nodes;
  const int32_t gpus_per_node = gpus / nodes, slots_per_gpu = R / gpus;
  // Step 1: groups to nodes by total load. log2mlog numbers experts node-major ("middle" ids).
  std::vector<double> gw(groups, 0.0);
  for (int32_t e = 0; e < E; ++e) gw[e / group_size] += w[e];
  std::vector<int32_t> gpack(groups), grank(groups);
  eplb_pack(gw.data(), groups, nodes, gpack.data(), grank.data());
  std::vector<int32_t> log2mlog(E), mlog2log(E);
  for (int32_t e = 0; e < E; ++e) {
    const int32_t g = e / group_size;
    log2mlog[e] = (gpack[g] * groups_per_node + grank[g]) * group_size + e % group_size;
    mlog2log[log2mlog[e]] = e;
  }
  // Steps 2 and 3 per node.
  std::vector<double> wn(experts_per_node), per_phy(phy_per_node);
  std::vector<int32_t> p2m(phy_per_node), prank(phy_per_node), mcnt(experts_per_node);
  std::vector<int32_t> pk(phy_per_node), rk(phy_per_node), pphy2phy(phy_per_node);
  for (int32_t node = 0; node < nodes; ++node) {
    for (int32_t j = 0; j < experts_per_node; ++j) wn[j] = w[mlog2log[node * experts_per_node + j]];
    eplb_replicate(wn.data(), experts_per_node, phy_per_node, p2m.data(), prank.data(), mcnt.data());
    for (int32_t i = 0; i < phy_per_node; ++i) per_phy[i] = wn[p2m[i]] / mcnt[p2m[i]];
    eplb_pack(per_phy.data(), phy_per_node, gpus_per_node, pk.data(), rk.data());
    for (int32_t i = 0; i < phy_per_node; ++i) pphy2phy[pk[i] * slots_per_gpu + rk[i]] = i;
    for (int32_t s = 0; s < phy_per_node; ++s) {
      const int32_t i = pphy2phy[s];
      const int32_t out = node * phy_per_node + s;
      phy2log[out] = mlog2log[node * experts_per_node + p2m[i]];
      phyrank[out] = prank[i];
    }
    for (int32_t j = 0; j < experts_per_node; ++j)
      logcnt[mlog2log[node * experts_per_node + j]] = mcnt[j];
  }
}

}  // namespace detail

static void check_weights(const double* w, size_t n, int32_t E) {
  for (size_t i = 0; i < n; ++i) {
    MOEBAL_CHECK_ARG(std::isfinite(w[i]), "eplb: weight at layer ", i / E, ", expert ", i % E,
                     " is not finite (", w[i], ")");
    MOEBAL_CHECK_ARG(w[i] >= 0, "eplb: weight at layer ", i / E, ", expert ", i % E,
                     " is negative (", w[i], ")");
  }
}

EplbTables eplb_rebalance(const double* weight, int32_t L, int32_t E, int32_t R, int32_t groups,
                          int32_t nodes, int32_t gpus) {
  MOEBAL_CHECK_ARG(L > 0, "eplb: weight needs at least one layer, got ", L);
  MOEBAL_CHECK_ARG(E > 0, "eplb: weight needs at least one expert, got ", E);
  MOEBAL_CHECK_ARG(groups > 0, "eplb: num_groups must be > 0, got ", groups);
  MOEBAL_CHECK_ARG(nodes > 0, "eplb: num_nodes must be > 0, got ", nodes);
  MOEBAL_CHECK_ARG(gpus > 0, "eplb: num_gpus must be > 0, got ", gpus);
  MOEBAL_CHECK_ARG(R >= E, "eplb: num_replicas (", R, ") must be >= the number of logical experts (",
                   E, ") so every expert has a copy");
  MOEBAL_CHECK_ARG(R % gpus == 0, "eplb: num_replicas (", R, ") must be divisible by num_gpus (",
                   gpus, ")");
  MOEBAL_CHECK_ARG(weight != nullptr, "eplb: weight is null");
  const bool hier = groups % nodes == 0;
  if (hier) {
    MOEBAL_CHECK_ARG(E % groups == 0, "eplb: hierarchical policy (num_groups % num_nodes == 0) needs "
                     "num_experts (", E, ") divisible by num_groups (", groups, ")");
    MOEBAL_CHECK_ARG(gpus % nodes == 0, "eplb: hierarchical policy needs num_gpus (", gpus,
                     ") divisible by num_nodes (", nodes, ")");
  }
  check_weights(weight, static_cast<size_t>(L) * E, E);
  EplbTables t;
  t.num_layers = L;
  t.num_experts = E;
  t.num_replicas = R;
  t.hierarchical = hier;
  t.phy2log.resize(static_cast<size_t>(L) * R);
  t.phyrank.resize(static_cast<size_t>(L) * R);
  t.logcnt.resize(static_cast<size_t>(L) * E);
  for (int32_t l = 0; l < L; ++l)
    detail::eplb_layer(weight + static_cast<size_t>(l) * E, E, R, groups, nodes, gpus, hier,
                       t.phy2log.data() + static_cast<size_t>(l) * R,
                       t.phyrank.data() + static_cast<size_t>(l) * R,
                       t.logcnt.data() + static_cast<size_t>(l) * E);
  return t;
}

Placement plan_eplb(const PlanRequest& req) {
  req.validate();
  const LoadMatrix& m = *req.loads;
  // validate() checked the layout for the constraint the request implies; EPLB's own rule decides
  // the path (for num_nodes == 1 the hierarchical path with one node equals the global one).
  EplbTables t = eplb_rebalance(m.loads.data(), m.num_layers, m.num_experts, req.num_slots,
                                req.num_groups, req.num_nodes, req.num_gpus);
  // Placement keeps log2phy ascending (its documented layout) with EPLB's padding width; the
  // replica-rank order of the original lives in EplbTables::phyrank (moebal.eplb uses it).
  return Placement::from_phy2log(m.num_layers, m.num_experts, req.num_slots, req.num_gpus,
                                 req.num_nodes, std::move(t.phy2log),
                                 req.num_slots - m.num_experts + 1);
}

}  // namespace moebal::core
