// PROBE planner, CPU reference. The decisions come from the integer helpers in probe_detail.h, which
// the CUDA kernel shares; this file only organises the search. The kernel evaluates every
// (expert, helper) pair in parallel and keeps the best; here the same best is found with an exact
// pruned search (upper bounds on the gain, strict comparisons so ties are never pruned).
#include "moebal/core/probe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "moebal/core/error.h"
#include "moebal/core/probe_detail.h"

namespace moebal::core {

namespace pd = probe_detail;

void ProbeConfig::validate() const {
  MOEBAL_CHECK_ARG(num_ranks >= 1 && num_ranks <= kProbeMaxRanks, "probe: num_ranks must be in [1, ",
                   kProbeMaxRanks, "], got ", num_ranks);
  MOEBAL_CHECK_ARG(num_experts >= 1 && num_experts <= kProbeMaxExperts, "probe: num_experts must be in [1, ",
                   kProbeMaxExperts, "], got ", num_experts);
  MOEBAL_CHECK_ARG(num_slots >= num_experts, "probe: num_slots (", num_slots, ") must be >= num_experts (",
                   num_experts, ")");
  MOEBAL_CHECK_ARG(num_slots % num_ranks == 0, "probe: num_slots (", num_slots,
                   ") must be a multiple of num_ranks (", num_ranks, ")");
  MOEBAL_CHECK_ARG(num_slots <= (1 << 24), "probe: num_slots must be <= 2^24, got ", num_slots);
  MOEBAL_CHECK_ARG(ranks_per_node >= 0 && (ranks_per_node == 0 || num_ranks % ranks_per_node == 0),
                   "probe: ranks_per_node must be 0 or divide num_ranks (", num_ranks, "), got ",
                   ranks_per_node);
  MOEBAL_CHECK_ARG(max_extra_slots >= 0 && max_extra_slots <= kProbeMaxExtraSlots,
                   "probe: max_extra_slots (S) must be in [0, ", kProbeMaxExtraSlots, "], got ", max_extra_slots);
  MOEBAL_CHECK_ARG(max_iters >= 0 && max_iters <= kProbeMaxIters, "probe: max_iters (k_max) must be in [0, ",
                   kProbeMaxIters, "], got ", max_iters);
  MOEBAL_CHECK_ARG(expert_bytes >= 0, "probe: expert_bytes must be >= 0, got ", expert_bytes);
  MOEBAL_CHECK_ARG(std::isfinite(intra_node_GBps) && intra_node_GBps > 0,
                   "probe: intra_node_GBps must be finite and > 0, got ", intra_node_GBps);
  MOEBAL_CHECK_ARG(std::isfinite(inter_node_GBps) && inter_node_GBps > 0,
                   "probe: inter_node_GBps must be finite and > 0, got ", inter_node_GBps);
  MOEBAL_CHECK_ARG(std::isfinite(min_gain_us) && min_gain_us >= 0 && min_gain_us <= kProbeMaxWindowUs,
                   "probe: min_gain_us must be finite and in [0, 1e9], got ", min_gain_us);
}

int64_t probe_us_to_ps(double us) {
  MOEBAL_CHECK_ARG(!std::isnan(us) && us >= 0, "probe: time must be >= 0 and not NaN, got ", us);
  if (us > kProbeMaxWindowUs) return pd::kInfPs;
  return pd::round_ps(us);
}

int64_t probe_transfer_ps(int64_t bytes, double GBps) {
  MOEBAL_CHECK_ARG(std::isfinite(GBps) && GBps > 0, "probe: bandwidth must be finite and > 0, got ", GBps);
  MOEBAL_CHECK_ARG(bytes >= 0, "probe: bytes must be >= 0, got ", bytes);
  const double ps = std::nearbyint(static_cast<double>(bytes) / GBps * 1e3);  // bytes/GBps is ns
  return ps >= static_cast<double>(pd::kMaxTransferPs) ? pd::kMaxTransferPs : static_cast<int64_t>(ps);
}

namespace {

// Carves the workspace; with base == nullptr it only measures.
struct Layout {
  uint64_t *native, *extra, *node_mask;
  int32_t *m, *loc;
  int64_t *colsum;
  int64_t *T, *T0, *a, *b, *win, *in, *out, *tok, *tok0, *q, *cand_ub, *memo_xe, *memo_g, *memo_x;
  int32_t *slots, *node, *rep_e, *rep_src, *mv_e, *mv_from, *mv_to, *mv_amt, *rank_exp, *rank_nexp,
      *order, *cand_e, *memo_k;
  size_t bytes;
};

template <class T>
T* carve(uint8_t* base, size_t& off, size_t n) {
  off = (off + 63) & ~size_t(63);
  T* p = base ? reinterpret_cast<T*>(base + off) : nullptr;
  off += n * sizeof(T);
  return p;
}

Layout make_layout(const ProbeConfig& c, uint8_t* base) {
  const size_t R = c.num_ranks, E = c.num_experts, S = c.max_extra_slots, K = c.max_iters;
  const size_t spg = static_cast<size_t>(c.num_slots) / R;
  Layout l{};
  size_t off = 0;
  l.native = carve<uint64_t>(base, off, E);
  l.extra = carve<uint64_t>(base, off, E);
  l.node_mask = carve<uint64_t>(base, off, R);
  l.m = carve<int32_t>(base, off, R * E);
  l.loc = carve<int32_t>(base, off, R * E);
  l.colsum = carve<int64_t>(base, off, E);
  for (int64_t** p : {&l.T, &l.T0, &l.a, &l.b, &l.win, &l.in, &l.out, &l.tok, &l.tok0, &l.q})
    *p = carve<int64_t>(base, off, R);
  l.cand_ub = carve<int64_t>(base, off, spg + S + 1);
  l.memo_xe = carve<int64_t>(base, off, 2 * R);
  l.memo_g = carve<int64_t>(base, off, 2 * R);
  l.memo_x = carve<int64_t>(base, off, 2 * R);
  l.memo_k = carve<int32_t>(base, off, 2 * R);
  l.slots = carve<int32_t>(base, off, R);
  l.node = carve<int32_t>(base, off, R);
  l.rep_e = carve<int32_t>(base, off, R * S + 1);
  l.rep_src = carve<int32_t>(base, off, R * S + 1);
  l.mv_e = carve<int32_t>(base, off, K + 1);
  l.mv_from = carve<int32_t>(base, off, K + 1);
  l.mv_to = carve<int32_t>(base, off, K + 1);
  l.mv_amt = carve<int32_t>(base, off, (K + 1) * R);
  l.rank_exp = carve<int32_t>(base, off, R * spg);
  l.rank_nexp = carve<int32_t>(base, off, R);
  l.order = carve<int32_t>(base, off, R);
  l.cand_e = carve<int32_t>(base, off, spg + S + 1);
  l.bytes = off + 64;  // room to align the base
  return l;
}

// colsum[e] += counts[s][e] over sources; returns the OR of all counts (negative iff one is).
// The portable -O2 build does not vectorise this widening loop on its own; it is the one O(R E)
// pass over the input on the hot path.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("O3")))
#endif
int32_t column_sums(const int32_t* counts, int R, int E, int64_t* colsum) {
  int32_t neg = 0;
  for (int s = 0; s < R; ++s) {
    const int32_t* row = counts + static_cast<size_t>(s) * E;
    for (int e = 0; e < E; ++e) {
      colsum[e] += row[e];
      neg |= row[e];
    }
  }
  return neg;
}

// Helpers by (T ascending, rank ascending); insertion sort, as only two entries change per move.
void sort_order(int32_t* order, const int64_t* T, int R) {
  for (int i = 1; i < R; ++i) {
    const int32_t v = order[i];
    int j = i - 1;
    while (j >= 0 && (T[order[j]] > T[v] || (T[order[j]] == T[v] && order[j] > v))) {
      order[j + 1] = order[j];
      --j;
    }
    order[j + 1] = v;
  }
}

void plan_layer(const ProbeConfig& c, int32_t layer, const int32_t* counts, const int32_t* phy2log,
                const double* window_us, const Layout& w, int64_t t_intra, int64_t t_inter,
                int64_t min_gain, bool exhaustive, const ProbeOutputs& out) {
  const int R = c.num_ranks, E = c.num_experts, S = c.max_extra_slots, K = c.max_iters;
  const int spg = c.num_slots / R, rpn = c.nodes_ranks();
  const size_t RE = static_cast<size_t>(R) * E;

  // Static placement -> holder masks and per-rank expert lists.
  std::memset(w.native, 0, sizeof(uint64_t) * E);
  std::memset(w.extra, 0, sizeof(uint64_t) * E);
  for (int r = 0; r < R; ++r) {
    w.node[r] = r / rpn;
    w.node_mask[r] = pd::node_mask(r, rpn);
    int n = 0;
    for (int s = r * spg; s < (r + 1) * spg; ++s) {
      const int32_t e = phy2log[s];
      MOEBAL_CHECK_ARG(e >= 0 && e < E, "probe: phy2log[", layer, ", ", s, "] = ", e,
                       " is not an expert id in [0, ", E, ")");
      if (!((w.native[e] >> r) & 1)) w.rank_exp[r * spg + n++] = e;
      w.native[e] |= uint64_t(1) << r;
    }
    w.rank_nexp[r] = n;
  }
  for (int e = 0; e < E; ++e)
    MOEBAL_CHECK_ARG(w.native[e] != 0, "probe: expert ", e, " has no slot in phy2log of layer ", layer);

  // Counts: validate and take column sums (vectorisable), then the locality-first split.
  std::memset(w.colsum, 0, sizeof(int64_t) * E);
  const int32_t neg = column_sums(counts, R, E, w.colsum);
  if (neg < 0) {
    for (size_t i = 0; i < RE; ++i)
      MOEBAL_CHECK_ARG(counts[i] >= 0, "probe: counts[", layer, ", ", i / E, ", ", i % E, "] = ", counts[i],
                       " is negative");
  }
  int64_t total = 0;
  for (int e = 0; e < E; ++e) total += w.colsum[e];
  MOEBAL_CHECK_ARG(total <= std::numeric_limits<int32_t>::max(), "probe: layer ", layer, " has ", total,
                   " tokens in total; at most 2^31-1 are supported");

  std::memset(w.m, 0, sizeof(int32_t) * RE);
  std::memset(w.loc, 0, sizeof(int32_t) * RE);
  for (int e = 0; e < E; ++e) {
    const uint64_t h = w.native[e];
    if (pd::popcount64(h) == 1) {
      const int r = pd::ctz64(h);
      w.m[static_cast<size_t>(r) * E + e] = static_cast<int32_t>(w.colsum[e]);
      w.loc[static_cast<size_t>(r) * E + e] = counts[static_cast<size_t>(r) * E + e];
      continue;
    }
    for (int s = 0; s < R; ++s) {
      const int64_t n = counts[static_cast<size_t>(s) * E + e];
      if ((h >> s) & 1) {
        w.m[static_cast<size_t>(s) * E + e] += static_cast<int32_t>(n);
        w.loc[static_cast<size_t>(s) * E + e] += static_cast<int32_t>(n);
        continue;
      }
      pd::init_split(n, h, s, w.node_mask[s], [&](int r, int64_t v) { w.m[static_cast<size_t>(r) * E + e] += static_cast<int32_t>(v); });
    }
  }

  for (int r = 0; r < R; ++r) {
    const double wu = window_us[r];
    const int64_t ps = pd::window_ps(wu, kProbeMaxWindowUs);
    MOEBAL_CHECK_ARG(ps >= 0, "probe: window_us[", layer, ", ", r, "] = ", wu,
                     " must be >= 0 and either <= 1e9 or +inf");
    w.win[r] = ps;
    w.T[r] = w.tok[r] = w.in[r] = w.out[r] = 0;
    w.slots[r] = 0;
    w.order[r] = r;
  }
  for (int e = 0; e < E; ++e) {
    uint64_t h = w.native[e];
    while (h) {
      const int r = pd::ctz64(h);
      h &= h - 1;
      const int64_t n = w.m[static_cast<size_t>(r) * E + e];
      w.T[r] += pd::cost(n, w.a[r], w.b[r]);
      w.tok[r] += n;
    }
  }
  for (int r = 0; r < R; ++r) {
    w.T0[r] = w.T[r];
    w.tok0[r] = w.tok[r];
  }
  for (int i = 0; i < R * S; ++i) w.rep_e[i] = w.rep_src[i] = -1;
  sort_order(w.order, w.T, R);

  const pd::View v{R, E, S, rpn, w.native, w.extra, w.m, w.loc, w.T, w.a, w.b, w.win, w.in, w.out,
                   w.slots, w.node, t_intra, t_inter, min_gain};
  int32_t stats[kProbeNumStats] = {0, 0, 0, 0};
  int nm = 0;
  for (int i = 0; i < 2 * R; ++i) w.memo_k[i] = -1;
  for (int k = 0; k < K; ++k) {
    int bn = 0;
    for (int r = 1; r < R; ++r)
      if (w.T[r] > w.T[bn]) bn = r;
    const int64_t Tb = w.T[bn];
    // Gain of moving expert e from bn to d: pd::water_fill, with the helper's unconstrained optimum
    // memoised per (helper, whether d already runs e) for this iteration. When the pool is at least
    // xe + 2 (xe: last token count at which bn stays above d), water_fill's answer does not depend on
    // the pool or on draining (both candidates xe and xe + 1 are in range and larger amounts only
    // raise d), so the memoised answer is exact; otherwise water_fill runs in full.
    auto pair_gain = [&](int e, int d, int64_t* x) -> int64_t {
      const size_t be = static_cast<size_t>(bn) * E + e, de = static_cast<size_t>(d) * E + e;
      const int64_t mb = w.m[be], pool = mb - w.loc[be], md = w.m[de];
      const int64_t c = w.T[d] + (md == 0 ? w.a[d] : 0), sum = w.b[bn] + w.b[d];
      // pool >= xe + 2 with xe = (Tb - c) / sum, tested without the division: (pool - 1) sum > Tb - c.
      const bool big_pool = sum > 0 && pool >= 2 && (Tb <= c || (pool - 1) * sum > Tb - c);
      if (!big_pool) return pd::water_fill(Tb, w.T[d], mb, md, pool, w.a[bn], w.b[bn], w.a[d], w.b[d], x);
      const int slot = 2 * d + (md == 0 ? 1 : 0);
      if (w.memo_k[slot] != k) {
        const int64_t xe = Tb > c ? (Tb - c) / sum : 0;  // < pool - 1 < 2^31 here
        w.memo_xe[slot] = xe;
        w.memo_g[slot] = pd::water_fill(Tb, w.T[d], -1, md, xe + 2, w.a[bn], w.b[bn], w.a[d], w.b[d],
                                          &w.memo_x[slot]);
        w.memo_k[slot] = k;
      }
      *x = w.memo_x[slot];
      return w.memo_g[slot];
    };

    // Candidate experts on the bottleneck with movable (non-pinned) tokens and their gain bound.
    int nc = 0;
    const int ne = w.rank_nexp[bn] + w.slots[bn];
    for (int i = 0; i < ne; ++i) {
      const int e = i < w.rank_nexp[bn] ? w.rank_exp[bn * spg + i] : w.rep_e[bn * S + (i - w.rank_nexp[bn])];
      const size_t be = static_cast<size_t>(bn) * E + e;
      const int64_t pool = w.m[be] - w.loc[be];
      if (pool <= 0) continue;
      w.cand_e[nc] = e;
      w.cand_ub[nc] = w.b[bn] * pool + (w.loc[be] == 0 ? w.a[bn] : 0);
      ++nc;
    }
    // One pass over the candidate pairs. A pair's gain is computed first (memoised per helper, see
    // pair_gain); the window is checked only for pairs that would beat the best so far. A blocked
    // pair is remembered when it beats the best at its visit, which finds a blocked pair beating
    // the final best whenever one exists: the same statistic the GPU computes over all pairs.
    // Many experts usually reach the same (equalising) gain, so bounds rarely end the expert loop
    // early; candidates are visited in list order and skipped by bound, without sorting.
    // A bound of a pair's gain tighter than min(cand_ub, Tb - T_d): without draining the expert,
    // min(b_b x, Tb - T_d - b_d x) <= b_b (Tb - T_d) / (b_b + b_d); draining adds one candidate.
    // Evaluated in double with slack, so it never drops a pair whose gain can reach `bar`.
    auto may_reach = [&](int ci, int d, int64_t bar) {
      const size_t be = static_cast<size_t>(bn) * E + w.cand_e[ci];
      const double gap = static_cast<double>(Tb - w.T[d]);
      const double bb = static_cast<double>(w.b[bn]), bdv = static_cast<double>(w.b[d]);
      const double lhs = static_cast<double>(bar) - 4.0, sum = bb + bdv;
      // bb gap / sum >= lhs / (1 + 1e-9), multiplied out (no division)
      if (sum > 0 && bb * gap * (1.0 + 1e-9) >= lhs * sum) return true;
      if (w.loc[be] == 0) {
        const double pool = static_cast<double>(w.m[be]);
        const double drain = std::min(bb * pool + static_cast<double>(w.a[bn]), gap - bdv * pool);
        if (drain * (1.0 + 1e-9) >= lhs) return true;
      }
      return lhs <= 0.0;
    };
    bool found = false, blocked_found = false;
    int64_t bg = 0, bx = 0, kg = 0;
    uint64_t bs = 0, ks = 0;
    int be_ = -1, bd = -1;
    int64_t thr = min_gain + 1;  // a pair can only matter if its gain reaches thr
    for (int ci = 0; ci < nc; ++ci) {
      if (!exhaustive && w.cand_ub[ci] < thr) continue;
      const int e = w.cand_e[ci];
      for (int oi = 0; oi < R; ++oi) {
        const int d = w.order[oi];
        if (d == bn) continue;
        if (!exhaustive && Tb - w.T[d] < thr) break;  // gain <= Tb - T_d
        const bool holds = (((w.native[e] | w.extra[e]) >> d) & 1) != 0;
        if (!holds && w.slots[d] >= S) continue;
        // Surely window-blocked: no holder on d's node, and a cross-node transfer overflows d's window.
        const bool surely_blocked =
            !holds && (w.native[e] & w.node_mask[d]) == 0 && w.in[d] + t_inter > w.win[d];
        if (!exhaustive && !may_reach(ci, d, surely_blocked && blocked_found ? std::max(thr, kg) : thr)) continue;
        int64_t x = 0;
        const int64_t g = pair_gain(e, d, &x);
        if (g <= min_gain) continue;
        const uint64_t sec = pd::move_sec(!holds, e, d);
        if (found && !pd::better(g, sec, bg, bs)) continue;
        int64_t t = 0;
        if (surely_blocked || (!holds && pd::pick_source(v, e, d, true, &t) < 0)) {
          if (!blocked_found || pd::better(g, sec, kg, ks)) {
            blocked_found = true;
            kg = g;
            ks = sec;
          }
          continue;
        }
        found = true;
        bg = g;
        bs = sec;
        bx = x;
        be_ = e;
        bd = d;
        thr = bg;
      }
    }
    if (blocked_found && (!found || pd::better(kg, ks, bg, bs))) ++stats[kProbeStatWindowBlocked];
    if (!found) break;

    // Apply: take bx tokens of be_ off bn in locality order and hand them to bd.
    const int e = be_, d = bd;
    for (int s = 0; s < R; ++s)
      w.q[s] = pd::current_quota(counts[static_cast<size_t>(s) * E + e], w.native[e], s, e, bn, R, rpn, nm,
                                 w.mv_e, w.mv_from, w.mv_to, w.mv_amt);
    pd::take_tokens(w.q, bn, d, R, rpn, bx, w.mv_amt + static_cast<size_t>(nm) * R);
    w.mv_e[nm] = e;
    w.mv_from[nm] = bn;
    w.mv_to[nm] = d;
    if (!((((w.native[e] | w.extra[e]) >> d) & 1))) {
      int64_t t = 0;
      const int src = pd::pick_source(v, e, d, true, &t);
      MOEBAL_CHECK(src >= 0, "probe: accepted move has no weight source");
      w.rep_e[d * S + w.slots[d]] = e;
      w.rep_src[d * S + w.slots[d]] = src;
      ++w.slots[d];
      w.extra[e] |= uint64_t(1) << d;
      w.in[d] += t;
      w.out[src] += t;
      ++stats[kProbeStatNewReplicas];
    }
    const size_t bi = static_cast<size_t>(bn) * E + e, di = static_cast<size_t>(d) * E + e;
    w.T[bn] -= pd::cost(w.m[bi], w.a[bn], w.b[bn]);
    w.T[d] -= pd::cost(w.m[di], w.a[d], w.b[d]);
    w.m[bi] -= static_cast<int32_t>(bx);
    w.m[di] += static_cast<int32_t>(bx);
    w.T[bn] += pd::cost(w.m[bi], w.a[bn], w.b[bn]);
    w.T[d] += pd::cost(w.m[di], w.a[d], w.b[d]);
    w.tok[bn] -= bx;
    w.tok[d] += bx;
    w.loc[di] += w.mv_amt[static_cast<size_t>(nm) * R + d];
    ++nm;
    ++stats[kProbeStatMoves];
    sort_order(w.order, w.T, R);
  }

  // Outputs.
  if (out.quota) {
    int32_t* qbase = out.quota + static_cast<size_t>(layer) * RE * R;
    std::memset(qbase, 0, sizeof(int32_t) * RE * R);
    for (int s = 0; s < R; ++s) {
      for (int e = 0; e < E; ++e) {
        const int64_t n = counts[static_cast<size_t>(s) * E + e];
        if (n == 0) continue;
        int32_t* row = qbase + (static_cast<size_t>(s) * E + e) * R;
        pd::init_split(n, w.native[e], s, w.node_mask[s], [row](int r, int64_t v) { row[r] = static_cast<int32_t>(v); });
      }
    }
    for (int k = 0; k < nm; ++k) {
      for (int s = 0; s < R; ++s) {
        const int32_t amt = w.mv_amt[static_cast<size_t>(k) * R + s];
        if (amt == 0) continue;
        int32_t* row = qbase + (static_cast<size_t>(s) * E + w.mv_e[k]) * R;
        row[w.mv_from[k]] -= amt;
        row[w.mv_to[k]] += amt;
      }
    }
  }
  const size_t RS = static_cast<size_t>(R) * S;
  if (out.replica_expert) std::memcpy(out.replica_expert + layer * RS, w.rep_e, sizeof(int32_t) * RS);
  if (out.replica_src) std::memcpy(out.replica_src + layer * RS, w.rep_src, sizeof(int32_t) * RS);
  for (int r = 0; r < R; ++r) {
    if (out.rank_time_us) {
      out.rank_time_us[(static_cast<size_t>(layer) * 2) * R + r] = static_cast<double>(w.T0[r]) * 1e-6;
      out.rank_time_us[(static_cast<size_t>(layer) * 2 + 1) * R + r] = static_cast<double>(w.T[r]) * 1e-6;
    }
    if (out.rank_tokens) {
      out.rank_tokens[(static_cast<size_t>(layer) * 2) * R + r] = w.tok0[r];
      out.rank_tokens[(static_cast<size_t>(layer) * 2 + 1) * R + r] = w.tok[r];
    }
  }
  if (out.stats) std::memcpy(out.stats + static_cast<size_t>(layer) * kProbeNumStats, stats, sizeof(stats));
}

}  // namespace

size_t probe_workspace_bytes(const ProbeConfig& cfg) {
  cfg.validate();
  return make_layout(cfg, nullptr).bytes;
}

namespace detail {
// Same as probe_plan; `exhaustive` evaluates every pair (no pruning). Used by the tests to show the
// pruned search finds the same plan.
void probe_plan_impl(const ProbeConfig& cfg, int32_t num_layers, const ProbeInputs& in, const ProbeOutputs& out,
                     void* workspace, size_t workspace_bytes, bool exhaustive) {
  cfg.validate();
  MOEBAL_CHECK_ARG(num_layers >= 0, "probe: num_layers must be >= 0, got ", num_layers);
  if (num_layers == 0) return;
  MOEBAL_CHECK_ARG(in.counts && in.phy2log && in.fixed_us && in.us_per_token && in.window_us,
                   "probe: every input pointer (counts, phy2log, fixed_us, us_per_token, window_us) is required");
  const size_t need = make_layout(cfg, nullptr).bytes;
  MOEBAL_CHECK_ARG(workspace != nullptr && workspace_bytes >= need, "probe: workspace of ", workspace_bytes,
                   " bytes is too small; probe_workspace_bytes() = ", need);
  auto* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(workspace) + 63) & ~uintptr_t(63));
  const Layout w = make_layout(cfg, base);
  for (int r = 0; r < cfg.num_ranks; ++r) {
    w.a[r] = pd::model_ps(in.fixed_us[r], kProbeMaxFixedUs);
    MOEBAL_CHECK_ARG(w.a[r] >= 0, "probe: fixed_us[", r, "] = ", in.fixed_us[r], " must be finite and in [0, ",
                     kProbeMaxFixedUs, "]");
    w.b[r] = pd::model_ps(in.us_per_token[r], kProbeMaxUsPerToken);
    MOEBAL_CHECK_ARG(w.b[r] >= 0, "probe: us_per_token[", r, "] = ", in.us_per_token[r],
                     " must be finite and in [0, ", kProbeMaxUsPerToken, "]");
  }
  const int rpn = cfg.nodes_ranks();
  const int64_t t_intra = probe_transfer_ps(cfg.expert_bytes, cfg.intra_node_GBps);
  const int64_t t_inter = rpn == cfg.num_ranks ? t_intra : probe_transfer_ps(cfg.expert_bytes, cfg.inter_node_GBps);
  const int64_t min_gain = pd::round_ps(cfg.min_gain_us);
  const size_t RE = static_cast<size_t>(cfg.num_ranks) * cfg.num_experts;
  for (int32_t l = 0; l < num_layers; ++l)
    plan_layer(cfg, l, in.counts + l * RE, in.phy2log + static_cast<size_t>(l) * cfg.num_slots,
               in.window_us + static_cast<size_t>(l) * cfg.num_ranks, w, t_intra, t_inter, min_gain, exhaustive, out);
}
}  // namespace detail

void probe_plan(const ProbeConfig& cfg, int32_t num_layers, const ProbeInputs& in, const ProbeOutputs& out,
                void* workspace, size_t workspace_bytes) {
  detail::probe_plan_impl(cfg, num_layers, in, out, workspace, workspace_bytes, false);
}

}  // namespace moebal::core
