// PROBE planner, CPU reference. The decisions come from the integer helpers in probe_detail.h, which
// the CUDA kernel shares; this file only organises the search. The kernel evaluates every
// (expert, helper) pair in parallel and keeps the best; here the same best is found with an exact
// pruned search (upper bounds on the gain, strict comparisons so ties are never pruned).
#include "moebal/core/probe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ios>
#include <limits>
#include <utility>
#include <vector>

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
  uint64_t *native, *extra, *node_mask, *src_mask, *mv_src, *cand_nat, *cand_held, *cand_pass;
  int32_t *m, *loc;  // [R, E]; only entries (r, e) with r holding e are ever written or read
  uint32_t* qcol;  // [R, R]: quota columns of one expert's touched rows, by destination (sparse output)
  int32_t *colsum, *nsum, *npar, *gpar;  // nsum, npar: [nodes, E], gpar: [E], only with multi-copy placements
  int64_t *T, *T0, *a, *b, *win, *in, *out, *tok, *tok0, *ordT, *cand_ub, *cand_pool;
  int32_t *slots, *node, *rep_e, *rep_src, *mv_e, *mv_from, *mv_to, *mv_amt, *rank_exp, *rank_nexp, *order, *pos,
      *cand_e, *cand_drain, *mlist, *dexp, *dmv_start, *dmv;
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
  const size_t spg = static_cast<size_t>(c.num_slots) / R, nc = spg + S + 1;
  Layout l{};
  size_t off = 0;
  l.native = carve<uint64_t>(base, off, E);
  l.extra = carve<uint64_t>(base, off, E);
  l.node_mask = carve<uint64_t>(base, off, R);
  l.src_mask = carve<uint64_t>(base, off, K + 1);
  l.mv_src = carve<uint64_t>(base, off, K + 1);
  l.m = carve<int32_t>(base, off, R * E);
  l.loc = carve<int32_t>(base, off, R * E);
  l.colsum = carve<int32_t>(base, off, E);
  l.qcol = carve<uint32_t>(base, off, R * R);
  const size_t nodes = R / static_cast<size_t>(c.nodes_ranks());
  const size_t multi = c.num_slots > c.num_experts ? nodes * E : 0;  // some expert may have two copies
  l.nsum = carve<int32_t>(base, off, multi);
  l.npar = carve<int32_t>(base, off, multi);
  l.gpar = carve<int32_t>(base, off, multi ? E : 0);
  for (int64_t** p : {&l.T, &l.T0, &l.a, &l.b, &l.win, &l.in, &l.out, &l.tok, &l.tok0, &l.ordT})
    *p = carve<int64_t>(base, off, R);
  l.cand_ub = carve<int64_t>(base, off, nc);
  l.cand_nat = carve<uint64_t>(base, off, nc);
  l.cand_held = carve<uint64_t>(base, off, nc);
  l.cand_pass = carve<uint64_t>(base, off, 2 * nc);
  l.cand_pool = carve<int64_t>(base, off, nc);
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
  l.pos = carve<int32_t>(base, off, R);
  l.cand_e = carve<int32_t>(base, off, nc);
  l.cand_drain = carve<int32_t>(base, off, nc);
  l.mlist = carve<int32_t>(base, off, K + 1);
  l.dexp = carve<int32_t>(base, off, K + 1);
  l.dmv_start = carve<int32_t>(base, off, K + 2);
  l.dmv = carve<int32_t>(base, off, K + 1);
  l.bytes = off + 64;  // room to align the base
  return l;
}

// The two column passes below are the planner's only O(R E) work and vectorise. They are written
// once as force-inlined bodies and compiled twice: for the baseline ISA (SSE2 on x86-64), and, on
// x86 with GCC or Clang, for AVX2 (twice the lanes), chosen at run time from cpuid. Both compute the
// same wrapping 32-bit sums, so the plan does not depend on the path taken.
#if defined(__GNUC__) && !defined(__clang__)
#define MOEBAL_PROBE_VEC_BODY __attribute__((always_inline, optimize("O3"))) inline
#define MOEBAL_PROBE_VEC_FN __attribute__((optimize("O3")))
#elif defined(__GNUC__)
#define MOEBAL_PROBE_VEC_BODY __attribute__((always_inline)) inline
#define MOEBAL_PROBE_VEC_FN
#else
#define MOEBAL_PROBE_VEC_BODY inline
#define MOEBAL_PROBE_VEC_FN
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MOEBAL_PROBE_AVX2_CLONES 1
#endif

// colsum[e] = sum of counts[s][e] over sources, in 32-bit lanes (the SSE2 baseline vectorises it
// without widening). Returns the OR of all counts. When it is below 2^24 (no count is negative or
// 2^24 or more), every column sum is below R 2^24 <= 2^30, so their total is exact too; otherwise
// the caller checks the signs and takes the total in 64 bits (counts that large are unrealistic).
// It is the one O(R E) pass over the input on the hot path.
MOEBAL_PROBE_VEC_BODY uint32_t column_sums_body(const int32_t* counts, int R, int E, int32_t* colsum) {
  uint32_t bits = 0;
  const uint32_t* u = reinterpret_cast<const uint32_t*>(counts);
  uint32_t* cs = reinterpret_cast<uint32_t*>(colsum);
  for (int e = 0; e < E; ++e) {
    cs[e] = u[e];
    bits |= u[e];
  }
  int s = 1;
  for (; s + 4 <= R; s += 4) {  // four rows per pass: one load and store of the sums per four rows
    const uint32_t* r0 = u + static_cast<size_t>(s) * E;
    const uint32_t *r1 = r0 + E, *r2 = r1 + E, *r3 = r2 + E;
    for (int e = 0; e < E; ++e) {  // loaded once, before the store (which may alias them)
      const uint32_t a0 = r0[e], a1 = r1[e], a2 = r2[e], a3 = r3[e];
      bits |= (a0 | a1) | (a2 | a3);
      cs[e] += (a0 + a1) + (a2 + a3);
    }
  }
  for (; s < R; ++s) {
    const uint32_t* row = u + static_cast<size_t>(s) * E;
    for (int e = 0; e < E; ++e) {
      const uint32_t a = row[e];
      bits |= a;
      cs[e] += a;
    }
  }
  return bits;
}

// Adds (INIT: stores) NR consecutive rows of counts, starting at source s, into ns, and their signed
// parities into np (+ for even sources, - for odd ones); one pass over ns and np for up to 4 rows.
template <int NR, bool INIT>
MOEBAL_PROBE_VEC_BODY uint32_t node_rows(const uint32_t* row, int E, int s, uint32_t* ns, uint32_t* np) {
  const uint32_t neg = (s & 1) ? ~0u : 0u;  // x -> (x ^ neg) - neg negates x for an odd first row
  const uint32_t* r1 = row + (NR > 1 ? E : 0);
  const uint32_t* r2 = row + (NR > 2 ? 2 * E : 0);
  const uint32_t* r3 = row + (NR > 3 ? 3 * E : 0);
  uint32_t bits = 0;
  for (int e = 0; e < E; ++e) {  // loaded once, before the stores (which may alias them)
    const uint32_t a0 = row[e], a1 = NR > 1 ? r1[e] : 0, a2 = NR > 2 ? r2[e] : 0, a3 = NR > 3 ? r3[e] : 0;
    bits |= (a0 | a1) | (a2 | a3);
    const uint32_t sum = (a0 + a1) + (a2 + a3);
    const uint32_t p = ((a0 & 1) - (a1 & 1)) + ((a2 & 1) - (a3 & 1));
    const uint32_t sp = (p ^ neg) - neg;
    if (INIT) {
      ns[e] = sum;
      np[e] = sp;
    } else {
      ns[e] += sum;
      np[e] += sp;
    }
  }
  return bits;
}

// column_sums by node, for placements with multi-copy experts: nsum[j][e] = sum of counts[s][e]
// over the sources s of node j and npar[j][e] = sum of +-(counts[s][e] & 1) over them (+ for even s,
// - for odd s), both in wrapping 32-bit lanes; colsum[e] and gpar[e] are their sums over nodes. The
// split of a multi-copy expert then needs O(1) per node that holds it, and O(1) for all other nodes
// together, instead of a pass over all sources. Returns the OR of all counts (see column_sums).
MOEBAL_PROBE_VEC_BODY uint32_t column_sums_nodes_body(const int32_t* counts, int R, int E, int rpn, int32_t* colsum,
                                                      int32_t* nsum, int32_t* npar, int32_t* gpar) {
  uint32_t bits = 0;
  const uint32_t* u = reinterpret_cast<const uint32_t*>(counts);
  uint32_t* cs = reinterpret_cast<uint32_t*>(colsum);
  uint32_t* gp = reinterpret_cast<uint32_t*>(gpar);
  for (int j = 0; j < R / rpn; ++j) {
    uint32_t* ns = reinterpret_cast<uint32_t*>(nsum) + static_cast<size_t>(j) * E;
    uint32_t* np = reinterpret_cast<uint32_t*>(npar) + static_cast<size_t>(j) * E;
    const int s0 = j * rpn, s1 = s0 + rpn;
    const uint32_t* row = u + static_cast<size_t>(s0) * E;
    int s = s0;
    switch (rpn < 4 ? rpn : 4) {  // the first (up to) four rows store
      case 1: bits |= node_rows<1, true>(row, E, s, ns, np); break;
      case 2: bits |= node_rows<2, true>(row, E, s, ns, np); break;
      case 3: bits |= node_rows<3, true>(row, E, s, ns, np); break;
      default: bits |= node_rows<4, true>(row, E, s, ns, np); break;
    }
    s += rpn < 4 ? rpn : 4;
    for (; s + 4 <= s1; s += 4) bits |= node_rows<4, false>(u + static_cast<size_t>(s) * E, E, s, ns, np);
    switch (s1 - s) {
      case 1: bits |= node_rows<1, false>(u + static_cast<size_t>(s) * E, E, s, ns, np); break;
      case 2: bits |= node_rows<2, false>(u + static_cast<size_t>(s) * E, E, s, ns, np); break;
      case 3: bits |= node_rows<3, false>(u + static_cast<size_t>(s) * E, E, s, ns, np); break;
      default: break;
    }
    if (j == 0) {
      for (int e = 0; e < E; ++e) {
        cs[e] = ns[e];
        gp[e] = np[e];
      }
    } else {
      for (int e = 0; e < E; ++e) {
        cs[e] += ns[e];
        gp[e] += np[e];
      }
    }
  }
  return bits;
}

// rank[r] = the number of keys below key[r], for distinct keys: their sorted order without a
// sort's mispredicted branches (R^2 compares, 4 per AVX2 instruction; slower than std::sort in
// SSE2, which has no 64-bit compare, so only the AVX2 path uses it).
MOEBAL_PROBE_VEC_BODY void rank_keys_body(const int64_t* key, int R, int32_t* rank) {
  for (int r = 0; r < R; ++r) {
    const int64_t x = key[r];
    int64_t c = 0;
    for (int q = 0; q < R; ++q) c += key[q] < x;
    rank[r] = static_cast<int32_t>(c);
  }
}

MOEBAL_PROBE_VEC_FN uint32_t column_sums_base(const int32_t* counts, int R, int E, int32_t* colsum) {
  return column_sums_body(counts, R, E, colsum);
}
MOEBAL_PROBE_VEC_FN uint32_t column_sums_nodes_base(const int32_t* counts, int R, int E, int rpn, int32_t* colsum,
                                                    int32_t* nsum, int32_t* npar, int32_t* gpar) {
  return column_sums_nodes_body(counts, R, E, rpn, colsum, nsum, npar, gpar);
}
#if defined(MOEBAL_PROBE_AVX2_CLONES)
__attribute__((target("avx2"))) MOEBAL_PROBE_VEC_FN uint32_t column_sums_avx2(const int32_t* counts, int R, int E,
                                                                              int32_t* colsum) {
  return column_sums_body(counts, R, E, colsum);
}
__attribute__((target("avx2"))) MOEBAL_PROBE_VEC_FN uint32_t column_sums_nodes_avx2(const int32_t* counts, int R, int E,
                                                                                    int rpn, int32_t* colsum,
                                                                                    int32_t* nsum, int32_t* npar,
                                                                                    int32_t* gpar) {
  return column_sums_nodes_body(counts, R, E, rpn, colsum, nsum, npar, gpar);
}
__attribute__((target("avx2"))) MOEBAL_PROBE_VEC_FN void rank_keys_avx2(const int64_t* key, int R, int32_t* rank) {
  rank_keys_body(key, R, rank);
}
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
#endif

// The vector kernels of one probe_plan call: the AVX2 clones when the CPU has AVX2 and the caller
// did not ask for the portable ones (the tests compare both).
struct Kernels {
  uint32_t (*column_sums)(const int32_t*, int, int, int32_t*);
  uint32_t (*column_sums_nodes)(const int32_t*, int, int, int, int32_t*, int32_t*, int32_t*, int32_t*);
  void (*rank_keys)(const int64_t*, int, int32_t*);  // null: sort instead
};

Kernels select_kernels(bool portable) {
#if defined(MOEBAL_PROBE_AVX2_CLONES)
  static const bool avx2 = cpu_has_avx2();
  if (avx2 && !portable) return {column_sums_avx2, column_sums_nodes_avx2, rank_keys_avx2};
#endif
  (void)portable;
  return {column_sums_base, column_sums_nodes_base, nullptr};
}

// pd::init_split of expert e for the sources [s0, s1) of one node, whose receiving tier (holders
// of e on the node, or all holders h) has three or more ranks: added to m, source by source.
void split_sources(const int32_t* counts, int E, int e, uint64_t h, uint64_t tier, int s0, int s1, int32_t* m) {
  const unsigned k = static_cast<unsigned>(pd::popcount64(tier));
  for (int s = s0; s < s1; ++s) {
    const int32_t n = counts[static_cast<size_t>(s) * E + e];
    if ((h >> s) & 1) continue;  // a holder keeps its tokens (m and loc start with them)
    const uint32_t un = static_cast<uint32_t>(n), base = un / k, rem = un % k, rot = static_cast<unsigned>(s) % k;
    uint64_t tt = tier;
    for (unsigned i = 0; tt; ++i) {
      const int r = pd::ctz64(tt);
      tt &= tt - 1;
      const unsigned idx = i >= rot ? i - rot : i + k - rot;  // (i - src) mod k
      m[static_cast<size_t>(r) * E + e] += static_cast<int32_t>(base + (idx < rem ? 1 : 0));
    }
  }
}

// Ranks by (T ascending, rank ascending) into order, with their keys in ordT and positions in pos;
// once per layer (sorting the keys themselves, not indices into T).
void sort_order(const int64_t* T, int R, int32_t* order, int64_t* ordT, int32_t* pos, const Kernels& kern) {
  int64_t any = 0;
  for (int r = 0; r < R; ++r) any |= T[r];
  if (any < (int64_t(1) << 57) && kern.rank_keys) {  // distinct packed keys (T, rank), below 2^63
    int64_t key[kProbeMaxRanks];
    for (int r = 0; r < R; ++r)
      key[r] = static_cast<int64_t>((static_cast<uint64_t>(T[r]) << 6) | static_cast<uint64_t>(r));
    kern.rank_keys(key, R, pos);
    for (int r = 0; r < R; ++r) {
      order[pos[r]] = r;
      ordT[pos[r]] = T[r];
    }
    return;
  }
  if (any < (int64_t(1) << 57)) {  // times below 2^57 ps (1.6 days): sort (T, rank) packed in one word
    uint64_t packed[kProbeMaxRanks];
    for (int r = 0; r < R; ++r) packed[r] = (static_cast<uint64_t>(T[r]) << 6) | static_cast<uint64_t>(r);
    std::sort(packed, packed + R);
    for (int i = 0; i < R; ++i) {
      const int r = static_cast<int>(packed[i] & 63);
      order[i] = r;
      ordT[i] = static_cast<int64_t>(packed[i] >> 6);
      pos[r] = i;
    }
    return;
  }
  std::pair<int64_t, int32_t> key[kProbeMaxRanks];
  for (int r = 0; r < R; ++r) key[r] = {T[r], r};
  std::sort(key, key + R);
  for (int i = 0; i < R; ++i) {
    order[i] = key[i].second;
    ordT[i] = key[i].first;
    pos[key[i].second] = i;
  }
}

// Moves rank r to its place in the (T, rank)-sorted order after T[r] changed; every other entry must
// be in order among themselves (ordT caches their keys). Cost: the distance r moves.
void reorder(int32_t* order, int64_t* ordT, int32_t* pos, int R, int r, int64_t t) {
  int i = pos[r];
  while (i > 0 && (ordT[i - 1] > t || (ordT[i - 1] == t && order[i - 1] > r))) {
    order[i] = order[i - 1];
    ordT[i] = ordT[i - 1];
    pos[order[i]] = i;
    --i;
  }
  while (i + 1 < R && (ordT[i + 1] < t || (ordT[i + 1] == t && order[i + 1] < r))) {
    order[i] = order[i + 1];
    ordT[i] = ordT[i + 1];
    pos[order[i]] = i;
    ++i;
  }
  order[i] = r;
  ordT[i] = t;
  pos[r] = i;
}

// Whether a move that does not drain the expert can gain `bar` (> 0): its gain is at most
// min(bb x, gap - bd x) maximised over real x, bb gap / (bb + bd), and 0 when bb + bd = 0.
inline bool no_drain_reaches(int64_t bb, int64_t gap, int64_t sum, int64_t bar) {
  return sum > 0 && static_cast<__int128>(bb) * gap >= static_cast<__int128>(bar) * sum;
}

// The next layer's counts (if any) are prefetched while this layer searches (compute on a small,
// cache-resident state), so the next column-sum pass reads them from cache, not memory.
void plan_layer(const ProbeConfig& c, int32_t layer, const int32_t* counts, const int32_t* next_counts,
                const int32_t* phy2log,
                const double* window_us, const Layout& w, int64_t t_intra, int64_t t_inter,
                int64_t min_gain, bool exhaustive, size_t cap, const Kernels& kern, const ProbeOutputs& out) {
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
  uint64_t multi = 0;  // non-zero when some expert has several static holders
  for (int e = 0; e < E; ++e) {
    const uint64_t h = w.native[e];
    MOEBAL_CHECK_ARG(h != 0, "probe: expert ", e, " has no slot in phy2log of layer ", layer);
    multi |= h & (h - 1);
  }

  // Counts: validate and take column sums (vectorised; per node with multi-copy experts), then the
  // locality-first split.
  const uint32_t bits = multi ? kern.column_sums_nodes(counts, R, E, rpn, w.colsum, w.nsum, w.npar, w.gpar)
                              : kern.column_sums(counts, R, E, w.colsum);
  int64_t total = 0;
  if (bits >> 24) {
    // A negative count, or one of 2^24 or more: check, and take the total in 64 bits. If it fits in
    // int32, no column sum of non-negative counts wrapped, so the 32-bit ones are exact.
    for (size_t i = 0; i < RE; ++i)
      MOEBAL_CHECK_ARG(counts[i] >= 0, "probe: counts[", layer, ", ", i / E, ", ", i % E, "] = ", counts[i],
                       " is negative");
    for (size_t i = 0; i < RE; ++i) total += counts[i];
  } else {
    for (int e = 0; e < E; ++e) total += w.colsum[e];
  }
  MOEBAL_CHECK_ARG(total <= std::numeric_limits<int32_t>::max(), "probe: layer ", layer, " has ", total,
                   " tokens in total; at most 2^31-1 are supported");

  // m and loc hold (rank, expert) entries only where the rank holds the expert; nothing else is
  // read (a rank without the expert processes none of its tokens), so the [R, E] arrays are never
  // cleared as a whole.
  for (int e = 0; e < E; ++e) {
    const uint64_t h = w.native[e];
    if ((h & (h - 1)) == 0) {
      const int r = pd::ctz64(h);
      w.m[static_cast<size_t>(r) * E + e] = w.colsum[e];
      w.loc[static_cast<size_t>(r) * E + e] = counts[static_cast<size_t>(r) * E + e];
      continue;
    }
    for (uint64_t hh = h; hh; hh &= hh - 1) {  // a holder keeps its own tokens
      const size_t i = static_cast<size_t>(pd::ctz64(hh)) * E + e;
      w.m[i] = w.loc[i] = counts[i];
    }
    // pd::init_split, node by node: a source that does not hold e sends to the holders on its node,
    // or to all holders when none is there (the tier, the same for the whole node). Integer sums
    // commute, so tokens are added per tier rather than source by source: from the node sums of
    // column_sums_nodes less the holders' own tokens (they keep them), N tokens go to a tier;
    // with two ranks in it the lower one gets (n + (n & 1)) / 2 of an even source and
    // (n - (n & 1)) / 2 of an odd one, (N + D) / 2 in total with D the signed parity sum. Exact:
    // N <= the layer total < 2^31 and |D| <= R. The nodes without a holder share one tier (all
    // holders), so they are taken together: the column sums less the holders' nodes.
    int64_t N_rest = static_cast<uint32_t>(w.colsum[e]), D_rest = w.gpar[e];
    uint64_t rest_nodes = R == 64 ? ~uint64_t(0) : (uint64_t(1) << R) - 1;  // sources on nodes without a holder
    for (uint64_t x = h; x; x &= ~w.node_mask[pd::ctz64(x)]) {
      const int hr = pd::ctz64(x), j = w.node[hr];
      const uint64_t tier = h & w.node_mask[hr];
      rest_nodes &= ~w.node_mask[hr];
      const size_t ji = static_cast<size_t>(j) * E + e;
      const int64_t Nj = static_cast<uint32_t>(w.nsum[ji]), Dj = w.npar[ji];
      N_rest -= Nj;
      D_rest -= Dj;
      const uint64_t second = tier & (tier - 1);
      if ((second & (second - 1)) == 0) {  // one or two holders on the node
        int64_t N = Nj, D = Dj;
        for (uint64_t y = tier; y; y &= y - 1) {
          const int s = pd::ctz64(y);
          const int32_t n = counts[static_cast<size_t>(s) * E + e];
          N -= n;
          D -= (s & 1) ? -(n & 1) : (n & 1);
        }
        if (second == 0) {
          w.m[static_cast<size_t>(hr) * E + e] += static_cast<int32_t>(N);
        } else {
          const int64_t sum0 = (N + D) / 2;
          w.m[static_cast<size_t>(hr) * E + e] += static_cast<int32_t>(sum0);
          w.m[static_cast<size_t>(pd::ctz64(second)) * E + e] += static_cast<int32_t>(N - sum0);
        }
      } else {
        split_sources(counts, E, e, h, tier, j * rpn, (j + 1) * rpn, w.m);
      }
    }
    if (rest_nodes == 0) continue;  // every node has a holder
    const uint64_t second = h & (h - 1);
    if ((second & (second - 1)) == 0) {  // two holders (there are at least two)
      const int64_t sum0 = (N_rest + D_rest) / 2;
      w.m[static_cast<size_t>(pd::ctz64(h)) * E + e] += static_cast<int32_t>(sum0);
      w.m[static_cast<size_t>(pd::ctz64(second)) * E + e] += static_cast<int32_t>(N_rest - sum0);
    } else {
      for (int j = 0; j < R / rpn; ++j)
        if ((rest_nodes >> (j * rpn)) & 1) split_sources(counts, E, e, h, h, j * rpn, (j + 1) * rpn, w.m);
    }
  }

  for (int r = 0; r < R; ++r) {
    const double wu = window_us[r];
    const int64_t ps = pd::window_ps(wu, kProbeMaxWindowUs);
    MOEBAL_CHECK_ARG(ps >= 0, "probe: window_us[", layer, ", ", r, "] = ", wu,
                     " must be >= 0 and either <= 1e9 or +inf");
    w.win[r] = ps;
    w.in[r] = w.out[r] = 0;
    w.slots[r] = 0;
  }
  for (int r = 0; r < R; ++r) {  // per rank over its static experts (integer sums: any order)
    const int32_t* mr = w.m + static_cast<size_t>(r) * E;
    const int32_t* ex = w.rank_exp + static_cast<size_t>(r) * spg;
    const int64_t ar = w.a[r], br = w.b[r];
    int64_t t = 0, tok = 0;
    for (int i = 0; i < w.rank_nexp[r]; ++i) {
      const int64_t n = mr[ex[i]];
      t += pd::cost(n, ar, br);
      tok += n;
    }
    w.T[r] = t;
    w.tok[r] = tok;
  }
  for (int r = 0; r < R; ++r) {
    w.T0[r] = w.T[r];
    w.tok0[r] = w.tok[r];
  }
  for (int i = 0; i < R * S; ++i) w.rep_e[i] = w.rep_src[i] = -1;
  sort_order(w.T, R, w.order, w.ordT, w.pos, kern);

  const pd::View v{R, E, S, rpn, w.native, w.extra, w.m, w.loc, w.T, w.a, w.b, w.win, w.in, w.out,
                   w.slots, w.node, t_intra, t_inter, min_gain};
  int32_t stats[kProbeNumStats] = {0, 0, 0, 0};
  int nm = 0;
  // Ranks with a free extra slot, and ranks whose window still fits a cross-node transfer.
  uint64_t has_slot = 0, xok = 0;
  for (int r = 0; r < R; ++r) {
    if (S > 0) has_slot |= uint64_t(1) << r;
    if (w.in[r] + t_inter <= w.win[r]) xok |= uint64_t(1) << r;
  }
  int64_t b_min = w.b[0];  // the smallest per-token time of any helper
  for (int r = 1; r < R; ++r) b_min = std::min(b_min, w.b[r]);
  const size_t lines = next_counts ? (RE * sizeof(int32_t) + 63) / 64 : 0;
  size_t prefetched = 0;
  const size_t per_iter = K > 0 ? (lines + K - 1) / K : lines;
  auto prefetch_to = [&](size_t upto) {
    for (; prefetched < upto && prefetched < lines; ++prefetched)
      __builtin_prefetch(reinterpret_cast<const char*>(next_counts) + prefetched * 64, 0, 2);
  };
  for (int k = 0; k < K; ++k) {
    prefetch_to(prefetched + per_iter);
    // Bottleneck: the largest time, lowest rank on ties: the first of the last run of equal keys.
    int top = R - 1;
    while (top > 0 && w.ordT[top - 1] == w.ordT[R - 1]) --top;
    const int bn = w.order[top];
    const int64_t Tb = w.T[bn], ab = w.a[bn], bb = w.b[bn];
    const int32_t* mb_row = w.m + static_cast<size_t>(bn) * E;
    const int32_t* lb_row = w.loc + static_cast<size_t>(bn) * E;

    // Candidate experts on the bottleneck with movable (non-pinned) tokens and their gain bound.
    int nc = 0;
    const int ne = w.rank_nexp[bn] + w.slots[bn];
    for (int i = 0; i < ne; ++i) {
      const int e = i < w.rank_nexp[bn] ? w.rank_exp[bn * spg + i] : w.rep_e[bn * S + (i - w.rank_nexp[bn])];
      const int64_t pool = mb_row[e] - lb_row[e];
      if (pool <= 0) continue;
      w.cand_e[nc] = e;
      w.cand_pool[nc] = pool;
      w.cand_drain[nc] = lb_row[e] == 0;  // all of e's tokens on bn are movable: a move may drain it
      w.cand_ub[nc] = bb * pool + (lb_row[e] == 0 ? ab : 0);
      w.cand_nat[nc] = w.native[e];
      w.cand_held[nc] = w.native[e] | w.extra[e];
      ++nc;
    }

    // The best usable pair under pd::better (largest gain, then no new replica, lower expert, lower
    // helper), found by an exact pruned search. Helpers are visited by ascending time, so the gap
    // Tb - T_d (a bound of any pair's gain with d) only shrinks and ends the loop. A pair that keeps
    // some of e on bn gains at most b_b (Tb - c) / (b_b + b_d) (c = T_d, plus a_d when d has no
    // tokens of e), and one that drains e gains exactly min(b_b pool + a_b, Tb - c - b_d pool); both
    // are compared exactly (integers) with >=, so pairs that can tie are never dropped.
    // The gain itself is pd::water_fill, memoised per (helper, whether d already runs e): when the
    // pool is at least xe + 2 (xe: last token count at which bn stays above d), water_fill's answer
    // does not depend on the pool or on draining (both candidates xe and xe + 1 are in range and
    // larger amounts only raise d), so the memoised answer is exact; otherwise water_fill runs in full.
    //
    // Pass 0 visits every pair except the surely window-blocked ones (d lacks e, no holder of e is
    // on d's node, and a cross-node transfer overflows d's window): it finds the best usable pair,
    // checking the window only for pairs that would beat the best so far, and remembers a blocked
    // pair when it beats the best at its visit (so it finds a blocked pair beating the final best
    // whenever one exists). Pass 1, only when pass 0 found no such pair, looks for a surely-blocked
    // pair beating the final best and stops at the first. Together: the window-blocked statistic
    // the GPU computes over all pairs. Helpers whose pairs all belong to the other pass are skipped
    // with two mask tests, which matters across nodes, where most helpers are surely blocked.
    // Per candidate, the helpers of each pass: pass 0 takes d if d holds e, or d has a free slot
    // and either a holder of e on its node or room in its window for a cross-node transfer; pass 1
    // takes the rest of the helpers with a free slot (the surely window-blocked pairs).
    uint64_t helpers[2] = {0, 0};
    int64_t max_drain_ub = std::numeric_limits<int64_t>::min();  // largest cand_ub of a drainable candidate
    int64_t min_drain_pool = std::numeric_limits<int64_t>::max();  // smallest pool of a drainable candidate
    for (int ci = 0; ci < nc; ++ci) {
      if (w.cand_drain[ci]) {
        max_drain_ub = std::max(max_drain_ub, w.cand_ub[ci]);
        min_drain_pool = std::min(min_drain_pool, w.cand_pool[ci]);
      }
      uint64_t near = 0;
      for (uint64_t x = w.cand_nat[ci]; x; x &= ~w.node_mask[pd::ctz64(x)]) near |= w.node_mask[pd::ctz64(x)];
      const uint64_t held = w.cand_held[ci];
      w.cand_pass[2 * ci] = held | ((near | xok) & has_slot);
      w.cand_pass[2 * ci + 1] = ~held & has_slot & ~near & ~xok;
      helpers[0] |= w.cand_pass[2 * ci];
      helpers[1] |= w.cand_pass[2 * ci + 1];
    }
    if (max_drain_ub == std::numeric_limits<int64_t>::min()) min_drain_pool = 0;  // no drainable candidate
    bool found = false, blocked_found = false;
    int64_t bg = 0, bx = 0, kg = 0;
    uint64_t bs = 0, ks = 0;
    int be_ = -1, bd = -1;
    int64_t thr = min_gain + 1;  // a pair can only matter if its gain reaches thr
    for (int pass = 0; pass < 2 && !blocked_found; ++pass) {
      const uint64_t* cpass = w.cand_pass + pass;
      // The pass's helpers as a set of positions in the time order: visited in that order without
      // a test per rank. Built from the helpers or, when they are most ranks (typical of pass 1),
      // from the ranks that are not: a cost of min(helpers, non-helpers).
      const uint64_t all = R == 64 ? ~uint64_t(0) : (uint64_t(1) << R) - 1;
      const uint64_t hel = helpers[pass] & ~(uint64_t(1) << bn);
      uint64_t posm = 0;
      if (2 * pd::popcount64(hel) > R) {
        posm = all;
        for (uint64_t x = all & ~hel; x; x &= x - 1) posm &= ~(uint64_t(1) << w.pos[pd::ctz64(x)]);
      } else {
        for (uint64_t x = hel; x; x &= x - 1) posm |= uint64_t(1) << w.pos[pd::ctz64(x)];
      }
      for (; posm; posm &= posm - 1) {
        const int d = w.order[pd::ctz64(posm)];
        const int64_t Td = w.T[d], gap = Tb - Td;
        if (!exhaustive && gap < thr) break;  // gain <= Tb - T_d
        const uint64_t dbit = uint64_t(1) << d;
        const int64_t ad = w.a[d], bdv = w.b[d], sum = bb + bdv;
        // No pair with d can reach thr: neither without draining (bound with c = T_d, the larger
        // of the two) nor by draining a candidate c, which gains min(cand_ub_c, Tb - c - b_d pool_c)
        // <= min(max_drain_ub, gap - b_d min_drain_pool).
        if (!exhaustive && std::min(max_drain_ub, gap - bdv * min_drain_pool) < thr &&
            !no_drain_reaches(bb, gap, sum, thr)) {
          // Neither can any later helper d': its gap is no larger, b_d' >= b_min, and thr only
          // rises, so both bounds stay below thr.
          if (std::min(max_drain_ub, gap - b_min * min_drain_pool) < thr &&
              !no_drain_reaches(bb, gap, bb + b_min, thr))
            break;
          continue;
        }
        const int32_t* md_row = w.m + static_cast<size_t>(d) * E;
        bool memo_ok[2] = {false, false};
        int64_t memo_g[2] = {0, 0}, memo_x[2] = {0, 0};
        for (int c0 = 0; c0 < nc && !(pass == 1 && blocked_found); c0 += 64) {
          // This chunk's candidates whose pass set has d and whose bound reaches thr, as a mask
          // (built without branches; thr may rise during the loop, so the bound is tested again).
          const int c1 = std::min(nc, c0 + 64);
          uint64_t cm = 0;
          for (int ci = c0; ci < c1; ++ci)
            cm |= ((cpass[2 * ci] >> d) & static_cast<uint64_t>(exhaustive || w.cand_ub[ci] >= thr)) << (ci - c0);
          for (; cm; cm &= cm - 1) {
            const int ci = c0 + pd::ctz64(cm);
            if (!exhaustive && w.cand_ub[ci] < thr) continue;
            const int e = w.cand_e[ci];
            const bool holds = (w.cand_held[ci] & dbit) != 0;
            const int64_t md = holds ? md_row[e] : 0;
            const int64_t pool = w.cand_pool[ci];
            const int64_t cd = Td + (md == 0 ? ad : 0);
            if (!exhaustive) {
              const bool drain_reaches = w.cand_drain[ci] && std::min(bb * pool + ab, Tb - cd - bdv * pool) >= thr;
              if (!drain_reaches && !no_drain_reaches(bb, Tb - cd, sum, thr)) continue;
            }
            int64_t x = 0, g = 0;
            // pool >= xe + 2 with xe = (Tb - cd) / sum, tested without the division: (pool - 1) sum > Tb - cd.
            const bool big_pool = sum > 0 && pool >= 2 && (Tb <= cd || (pool - 1) * sum > Tb - cd);
            if (!big_pool) {
              g = pd::water_fill(Tb, Td, mb_row[e], md, pool, ab, bb, ad, bdv, &x);
            } else {
              const int slot = md == 0 ? 1 : 0;
              if (!memo_ok[slot]) {
                const int64_t xe = Tb > cd ? (Tb - cd) / sum : 0;  // < pool - 1 < 2^31 here
                memo_g[slot] = pd::water_fill(Tb, Td, -1, md, xe + 2, ab, bb, ad, bdv, &memo_x[slot]);
                memo_ok[slot] = true;
              }
              x = memo_x[slot];
              g = memo_g[slot];
            }
            if (g <= min_gain) continue;
            const uint64_t sec = pd::move_sec(!holds, e, d);
            if (found && !pd::better(g, sec, bg, bs)) continue;
            if (pass == 1) {  // beats the final best: the iteration is window-blocked
              blocked_found = true;
              break;
            }
            int64_t t = 0;
            if (!holds && pd::pick_source(v, e, d, true, &t) < 0) {
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
        if (pass == 1 && blocked_found) break;
      }
      // Pass 0's blocked pairs count only if they beat the final best; otherwise pass 1 decides.
      if (pass == 0 && blocked_found && found && !pd::better(kg, ks, bg, bs)) blocked_found = false;
    }
    if (blocked_found) ++stats[kProbeStatWindowBlocked];
    if (!found) break;

    // Apply: take bx tokens of be_ off bn in locality order (pd::take_tokens: d's own tokens, then
    // sources on d's node, then the rest, ascending rank; bn's own are pinned) and hand them to bd.
    // A source's share on bn is its default split plus the earlier moves of e; it is computed only
    // for the sources reached before the bx tokens are used up.
    const int e = be_, d = bd;
    int nl = 0;  // earlier moves of e to or from bn (2 j + 1: to bn, 2 j: from bn); others leave bn's share
    for (int j = 0; j < nm; ++j)
      if (w.mv_e[j] == e && (w.mv_to[j] == bn || w.mv_from[j] == bn)) w.mlist[nl++] = 2 * j + (w.mv_to[j] == bn);
    int32_t* amt = w.mv_amt + static_cast<size_t>(nm) * R;
    std::memset(amt, 0, sizeof(int32_t) * R);
    int64_t rem = bx;
    uint64_t taken = 0;  // sources with amt > 0
    const int n0 = w.node[d] * rpn, n1 = n0 + rpn;
    if (nl == 0 && w.native[e] == (uint64_t(1) << bn)) {
      // e's only static holder is bn and no earlier move took e to or from bn: every other source's
      // share on bn is its count.
      const int32_t* col = counts + e;
      auto take_all = [&](int s) {
        const int32_t q = col[static_cast<size_t>(s) * E];
        const int32_t t = q < rem ? q : static_cast<int32_t>(rem);
        amt[s] = t;
        taken |= static_cast<uint64_t>(t > 0) << s;
        rem -= t;
      };
      take_all(d);
      for (int s = n0; s < n1 && rem > 0; ++s)
        if (s != bn && s != d) take_all(s);
      for (int s = 0; s < R && rem > 0; ++s)
        if (s != bn && (s < n0 || s >= n1)) take_all(s);
    } else {
      // The shares on bn are computed a node at a time, when the walk reaches the node, without a
      // branch per source (then the walk itself is a short dependency chain). pd::init_quota(n,
      // native[e], s, bn) depends on s only through n, whether s holds e, s mod k and the receiving
      // tier of s's node; k = 1, 2 need no division. Sums wrap in 32 bits; the shares are exact.
      const uint64_t he = w.native[e];
      uint32_t q[kProbeMaxRanks];
      auto shares = [&](int s0, int s1) {  // q[s] for the sources [s0, s1) of one node
        const uint64_t t = he & w.node_mask[s0], tier = t ? t : he;
        const unsigned k = static_cast<unsigned>(pd::popcount64(tier));
        const unsigned pos = static_cast<unsigned>(pd::popcount64(tier & ((uint64_t(1) << bn) - 1)));
        const uint32_t* cu = reinterpret_cast<const uint32_t*>(counts) + e;
        if (!((tier >> bn) & 1)) {
          for (int s = s0; s < s1; ++s) q[s] = 0;
        } else if (k == 1) {
          for (int s = s0; s < s1; ++s) q[s] = cu[static_cast<size_t>(s) * E];
        } else if (k == 2) {  // index (pos - s) mod 2 == 0 gets the odd token
          for (int s = s0; s < s1; ++s) {
            const uint32_t un = cu[static_cast<size_t>(s) * E];
            q[s] = (un >> 1) + (un & 1 & ~(pos ^ static_cast<unsigned>(s)));
          }
        } else {
          for (int s = s0; s < s1; ++s) {
            const uint32_t un = cu[static_cast<size_t>(s) * E];
            const unsigned rot = static_cast<unsigned>(s) % k;
            const unsigned idx = pos >= rot ? pos - rot : pos + k - rot;
            q[s] = un / k + (idx < un % k ? 1 : 0);
          }
        }
        for (int s = s0; s < s1; ++s) q[s] &= ((he >> s) & 1) - 1;  // a source holding e keeps its tokens
        for (int i = 0; i < nl; ++i) {
          const int jm = w.mlist[i];
          const uint32_t* a = reinterpret_cast<const uint32_t*>(w.mv_amt) + static_cast<size_t>(jm >> 1) * R;
          if (jm & 1) {
            for (int s = s0; s < s1; ++s) q[s] += a[s];
          } else {
            for (int s = s0; s < s1; ++s) q[s] -= a[s];
          }
        }
      };
      auto take = [&](int s) {
        const int64_t qs = static_cast<int32_t>(q[s]);
        const int64_t t = qs < rem ? qs : rem;
        amt[s] = static_cast<int32_t>(t);
        taken |= static_cast<uint64_t>(t > 0) << s;
        rem -= t;
      };
      shares(n0, n1);
      take(d);
      for (int s = n0; s < n1 && rem > 0; ++s)
        if (s != bn && s != d) take(s);
      for (int j0 = 0; j0 < R && rem > 0; j0 += rpn) {
        if (j0 == n0) continue;
        shares(j0, j0 + rpn);
        for (int s = j0; s < j0 + rpn && rem > 0; ++s)
          if (s != bn) take(s);
      }
    }
    w.mv_e[nm] = e;
    w.mv_from[nm] = bn;
    w.mv_to[nm] = d;
    w.mv_src[nm] = taken;
    const size_t bi = static_cast<size_t>(bn) * E + e, di = static_cast<size_t>(d) * E + e;
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
      if (w.slots[d] >= S) has_slot &= ~(uint64_t(1) << d);
      if (w.in[d] + t_inter > w.win[d]) xok &= ~(uint64_t(1) << d);
      w.m[di] = w.loc[di] = 0;  // d starts holding e
      ++stats[kProbeStatNewReplicas];
    }
    w.T[bn] -= pd::cost(w.m[bi], w.a[bn], w.b[bn]);
    w.T[d] -= pd::cost(w.m[di], w.a[d], w.b[d]);
    w.m[bi] -= static_cast<int32_t>(bx);
    w.m[di] += static_cast<int32_t>(bx);
    w.T[bn] += pd::cost(w.m[bi], w.a[bn], w.b[bn]);
    w.T[d] += pd::cost(w.m[di], w.a[d], w.b[d]);
    w.tok[bn] -= bx;
    w.tok[d] += bx;
    w.loc[di] += amt[d];
    ++nm;
    ++stats[kProbeStatMoves];
    reorder(w.order, w.ordT, w.pos, R, bn, w.T[bn]);
    reorder(w.order, w.ordT, w.pos, R, d, w.T[d]);
  }

  prefetch_to(lines);

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
  if (out.num_quota_entries) {
    // Distinct moved experts (ascending), the moves of each, and the sources each one touched.
    int nd = 0;
    for (int k = 0; k < nm; ++k) {
      const int e = w.mv_e[k];
      int i = 0;
      while (i < nd && w.dexp[i] < e) ++i;
      if (i < nd && w.dexp[i] == e) continue;
      for (int j = nd; j > i; --j) w.dexp[j] = w.dexp[j - 1];
      w.dexp[i] = e;
      ++nd;
    }
    for (int i = 0; i <= nd; ++i) w.dmv_start[i] = 0;
    for (int k = 0; k < nm; ++k) {
      int i = 0;
      while (w.dexp[i] != w.mv_e[k]) ++i;
      w.mlist[k] = i;
      ++w.dmv_start[i + 1];
    }
    for (int i = 0; i < nd; ++i) {
      w.dmv_start[i + 1] += w.dmv_start[i];
      w.src_mask[i] = 0;
    }
    for (int k = 0; k < nm; ++k) {  // moves of each expert in move order (a counting sort)
      const int i = w.mlist[k];
      w.dmv[w.dmv_start[i]++] = k;
      w.src_mask[i] |= w.mv_src[k];
    }
    for (int i = nd; i > 0; --i) w.dmv_start[i] = w.dmv_start[i - 1];
    w.dmv_start[0] = 0;

    int32_t* ent = out.quota_entries + static_cast<size_t>(layer) * cap * kProbeQuotaFields;
    size_t n = 0;
    auto emit = [&](int s, int e, int r, int64_t tokens) {
      MOEBAL_CHECK(n < cap, "probe: sparse quota exceeds its capacity ", cap);
      int32_t* q = ent + n * kProbeQuotaFields;
      q[kProbeQuotaSrc] = s;
      q[kProbeQuotaExpert] = e;
      q[kProbeQuotaDst] = r;
      q[kProbeQuotaTokens] = static_cast<int32_t>(tokens);
      ++n;
    };
    for (int i = 0; i < nd; ++i) {
      const int e = w.dexp[i], j0 = w.dmv_start[i], j1 = w.dmv_start[i + 1];
      const uint64_t h = w.native[e];
      if ((h & (h - 1)) == 0 && j1 - j0 == 1) {
        // The common case: one static copy (on h0, where the move took tokens from) and one move
        // of e to t; a touched source's row is (h0: n - a, t: a), a > 0, in destination order.
        const int k = w.dmv[j0], h0 = pd::ctz64(h), t = w.mv_to[k];
        const int32_t* amt = w.mv_amt + static_cast<size_t>(k) * R;
        for (uint64_t sm = w.src_mask[i]; sm; sm &= sm - 1) {
          const int s = pd::ctz64(sm);
          const int64_t a = amt[s], left = counts[static_cast<size_t>(s) * E + e] - a;
          if (t < h0) emit(s, e, t, a);
          if (left > 0) emit(s, e, h0, left);
          if (t > h0) emit(s, e, t, a);
        }
        continue;
      }
      // Every rank a row of e can send to (the holders and the helpers), in ascending order, and a
      // column of row values per destination over all sources: the moves are applied to whole
      // columns (vectorised; a source a move did not touch gets 0), in wrapping 32-bit arithmetic
      // whose final values, the quotas, are exact. Then each touched row adds its default split.
      uint64_t dsts = w.native[e];
      for (int j = j0; j < j1; ++j) dsts |= uint64_t(1) << w.mv_to[w.dmv[j]];
      int dl[kProbeMaxRanks], didx[kProbeMaxRanks], ndl = 0;
      for (uint64_t x = dsts; x; x &= x - 1) {
        dl[ndl] = pd::ctz64(x);
        didx[dl[ndl]] = ndl;
        ++ndl;
      }
      uint32_t* col = w.qcol;
      std::memset(col, 0, sizeof(uint32_t) * ndl * R);
      for (int j = j0; j < j1; ++j) {
        const int k = w.dmv[j];
        const uint32_t* a = reinterpret_cast<const uint32_t*>(w.mv_amt) + static_cast<size_t>(k) * R;
        uint32_t* cf = col + static_cast<size_t>(didx[w.mv_from[k]]) * R;
        for (int s = 0; s < R; ++s) cf[s] -= a[s];
        uint32_t* ct = col + static_cast<size_t>(didx[w.mv_to[k]]) * R;
        for (int s = 0; s < R; ++s) ct[s] += a[s];
      }
      int tier_node = -1;  // the default split's tier for the current source's node (pd::init_split)
      uint64_t tier = 0;
      int tier_k = 0, r0 = 0, r1 = 0;
      for (uint64_t sm = w.src_mask[i]; sm; sm &= sm - 1) {
        const int s = pd::ctz64(sm);
        const uint32_t cnt = static_cast<uint32_t>(counts[static_cast<size_t>(s) * E + e]);
        if ((h & (h - 1)) == 0) {
          col[static_cast<size_t>(didx[pd::ctz64(h)]) * R + s] += cnt;  // one static copy: all to it
        } else if ((h >> s) & 1) {
          col[static_cast<size_t>(didx[s]) * R + s] += cnt;  // a holder keeps its tokens
        } else {
          if (w.node[s] != tier_node) {
            tier_node = w.node[s];
            const uint64_t t = h & w.node_mask[s];
            tier = t ? t : h;
            tier_k = pd::popcount64(tier);
            r0 = pd::ctz64(tier);
            r1 = tier_k >= 2 ? pd::ctz64(tier & (tier - 1)) : r0;
          }
          const uint32_t us = static_cast<uint32_t>(s);
          if (tier_k == 1) {
            col[static_cast<size_t>(didx[r0]) * R + s] += cnt;
          } else if (tier_k == 2) {  // the odd token goes to index s mod 2
            col[static_cast<size_t>(didx[r0]) * R + s] += (cnt >> 1) + (cnt & 1 & ~us);
            col[static_cast<size_t>(didx[r1]) * R + s] += (cnt >> 1) + (cnt & 1 & us);
          } else {
            pd::init_split(cnt, h, s, w.node_mask[s], [&](int r, int64_t q) {
              col[static_cast<size_t>(didx[r]) * R + s] += static_cast<uint32_t>(q);
            });
          }
        }
        for (int x = 0; x < ndl; ++x) {
          const uint32_t v = col[static_cast<size_t>(x) * R + s];
          if (v != 0) emit(s, e, dl[x], static_cast<int32_t>(v));
        }
      }
    }
    out.num_quota_entries[layer] = static_cast<int32_t>(n);
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

size_t probe_max_quota_entries(const ProbeConfig& cfg) {
  cfg.validate();
  const size_t R = cfg.num_ranks, E = cfg.num_experts, K = cfg.max_iters;
  const size_t copies = std::min<size_t>(R, static_cast<size_t>(cfg.num_slots - cfg.num_experts) + 1);
  return std::min((R - 1) * K * (copies + 1), R * E * R);
}

void probe_default_quota(const ProbeConfig& cfg, int32_t src, uint64_t holders, int32_t tokens, int32_t* row) {
  cfg.validate();
  const int R = cfg.num_ranks;
  MOEBAL_CHECK_ARG(src >= 0 && src < R, "probe: src must be a rank in [0, ", R, "), got ", src);
  MOEBAL_CHECK_ARG(holders != 0 && (R == 64 || (holders >> R) == 0), "probe: holders must be a non-empty set of ranks "
                   "below ", R, ", got 0x", std::hex, holders);
  MOEBAL_CHECK_ARG(tokens >= 0, "probe: tokens must be >= 0, got ", tokens);
  MOEBAL_CHECK_ARG(row != nullptr, "probe: row is required");
  for (int r = 0; r < R; ++r) row[r] = 0;
  pd::init_split(tokens, holders, src, pd::node_mask(src, cfg.nodes_ranks()),
                 [row](int r, int64_t v) { row[r] = static_cast<int32_t>(v); });
}

void probe_quota_to_dense(const ProbeConfig& cfg, int32_t num_layers, const int32_t* counts, const int32_t* phy2log,
                          const int32_t* quota_entries, const int32_t* num_quota_entries, size_t entries_per_layer,
                          int32_t* quota) {
  cfg.validate();
  const size_t cap = entries_per_layer;
  MOEBAL_CHECK_ARG(num_layers >= 0, "probe: num_layers must be >= 0, got ", num_layers);
  if (num_layers == 0) return;
  MOEBAL_CHECK_ARG(counts && phy2log && num_quota_entries && quota && (quota_entries || cap == 0),
                   "probe: counts, phy2log, quota_entries, num_quota_entries and quota are required");
  const int R = cfg.num_ranks, E = cfg.num_experts, spg = cfg.num_slots / R, rpn = cfg.nodes_ranks();
  const size_t RE = static_cast<size_t>(R) * E;
  std::vector<uint64_t> holders(E);
  for (int32_t l = 0; l < num_layers; ++l) {
    const int32_t* cnt = counts + l * RE;
    const int32_t* p2l = phy2log + static_cast<size_t>(l) * cfg.num_slots;
    int32_t* qbase = quota + static_cast<size_t>(l) * RE * R;
    std::fill(holders.begin(), holders.end(), 0);
    for (int s = 0; s < cfg.num_slots; ++s) {
      MOEBAL_CHECK_ARG(p2l[s] >= 0 && p2l[s] < E, "probe: phy2log[", l, ", ", s, "] = ", p2l[s],
                       " is not an expert id in [0, ", E, ")");
      holders[p2l[s]] |= uint64_t(1) << (s / spg);
    }
    for (int e = 0; e < E; ++e)
      MOEBAL_CHECK_ARG(holders[e] != 0, "probe: expert ", e, " has no slot in phy2log of layer ", l);
    std::memset(qbase, 0, sizeof(int32_t) * RE * R);
    for (int s = 0; s < R; ++s) {
      const uint64_t nm = pd::node_mask(s, rpn);
      for (int e = 0; e < E; ++e) {
        const int32_t n = cnt[static_cast<size_t>(s) * E + e];
        MOEBAL_CHECK_ARG(n >= 0, "probe: counts[", l, ", ", s, ", ", e, "] = ", n, " is negative");
        int32_t* row = qbase + (static_cast<size_t>(s) * E + e) * R;
        pd::init_split(n, holders[e], s, nm, [row](int r, int64_t v) { row[r] = static_cast<int32_t>(v); });
      }
    }
    const int32_t ne = num_quota_entries[l];
    MOEBAL_CHECK_ARG(ne >= 0 && static_cast<size_t>(ne) <= cap, "probe: num_quota_entries[", l, "] = ", ne,
                     " must be in [0, entries_per_layer = ", cap, "]");
    const int32_t* ent = quota_entries + static_cast<size_t>(l) * cap * kProbeQuotaFields;
    int64_t row_sum = 0;
    for (int32_t i = 0; i < ne; ++i) {
      const int32_t* q = ent + static_cast<size_t>(i) * kProbeQuotaFields;
      const int32_t s = q[kProbeQuotaSrc], e = q[kProbeQuotaExpert], d = q[kProbeQuotaDst], t = q[kProbeQuotaTokens];
      MOEBAL_CHECK_ARG(s >= 0 && s < R && e >= 0 && e < E && d >= 0 && d < R && t > 0, "probe: quota entry ", i,
                       " of layer ", l, " = (", s, ", ", e, ", ", d, ", ", t, ") is out of range (src, dst in [0, ", R,
                       "), expert in [0, ", E, "), tokens > 0)");
      const bool new_row = i == 0 || s != q[kProbeQuotaSrc - kProbeQuotaFields] || e != q[kProbeQuotaExpert - kProbeQuotaFields];
      if (i > 0) {
        const int32_t* p = q - kProbeQuotaFields;
        const bool ascending = p[kProbeQuotaExpert] < e || (p[kProbeQuotaExpert] == e && (p[kProbeQuotaSrc] < s ||
                               (p[kProbeQuotaSrc] == s && p[kProbeQuotaDst] < d)));
        MOEBAL_CHECK_ARG(ascending, "probe: quota entries of layer ", l, " must be strictly sorted by (expert, src, "
                         "dst); entry ", i, " is not");
      }
      int32_t* row = qbase + (static_cast<size_t>(s) * E + e) * R;
      if (new_row) {
        std::memset(row, 0, sizeof(int32_t) * R);
        row_sum = 0;
      }
      row[d] = t;
      row_sum += t;
      const bool row_end = i + 1 == ne || q[kProbeQuotaFields + kProbeQuotaSrc] != s ||
                           q[kProbeQuotaFields + kProbeQuotaExpert] != e;
      MOEBAL_CHECK_ARG(!row_end || row_sum == cnt[static_cast<size_t>(s) * E + e], "probe: quota entries of layer ", l,
                       " for (src ", s, ", expert ", e, ") sum to ", row_sum, " but counts has ",
                       cnt[static_cast<size_t>(s) * E + e]);
    }
  }
}
namespace detail {
// Same as probe_plan; `exhaustive` evaluates every pair (no pruning), `portable` keeps to the
// baseline-ISA kernels. Used by the tests to show the pruned search and every kernel path find the
// same plan.
void probe_plan_impl(const ProbeConfig& cfg, int32_t num_layers, const ProbeInputs& in, const ProbeOutputs& out,
                     void* workspace, size_t workspace_bytes, bool exhaustive, bool portable) {
  cfg.validate();
  MOEBAL_CHECK_ARG(num_layers >= 0, "probe: num_layers must be >= 0, got ", num_layers);
  if (num_layers == 0) return;
  MOEBAL_CHECK_ARG(in.counts && in.phy2log && in.fixed_us && in.us_per_token && in.window_us,
                   "probe: every input pointer (counts, phy2log, fixed_us, us_per_token, window_us) is required");
  const size_t cap = out.num_quota_entries ? probe_max_quota_entries(cfg) : 0;
  MOEBAL_CHECK_ARG(out.quota_entries == nullptr || out.num_quota_entries != nullptr,
                   "probe: quota_entries needs num_quota_entries (the sparse quota is on when num_quota_entries is set)");
  MOEBAL_CHECK_ARG(out.num_quota_entries == nullptr || out.quota_entries != nullptr || cap == 0,
                   "probe: num_quota_entries is set but quota_entries is null (capacity ", cap, " entries per layer)");
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
  const Kernels kern = select_kernels(portable);
  for (int32_t l = 0; l < num_layers; ++l)
    plan_layer(cfg, l, in.counts + l * RE, l + 1 < num_layers ? in.counts + (l + 1) * RE : nullptr,
               in.phy2log + static_cast<size_t>(l) * cfg.num_slots, in.window_us + static_cast<size_t>(l) * cfg.num_ranks,
               w, t_intra, t_inter, min_gain, exhaustive, cap, kern, out);
}
// Whether probe_plan (portable = false) runs the AVX2 kernels on this CPU; the tests skip the
// comparison of the two paths when there is only one.
bool probe_avx2_kernels() { return select_kernels(false).column_sums != column_sums_base; }
}  // namespace detail

void probe_plan(const ProbeConfig& cfg, int32_t num_layers, const ProbeInputs& in, const ProbeOutputs& out,
                void* workspace, size_t workspace_bytes) {
  detail::probe_plan_impl(cfg, num_layers, in, out, workspace, workspace_bytes, false, false);
}

}  // namespace moebal::core
