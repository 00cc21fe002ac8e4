// Integer arithmetic of the PROBE planner shared verbatim by the CPU reference (cpp/probe.cpp) and
// the CUDA kernel (cuda/probe.cu), so both take the same decision for every candidate move.
// Internal: not part of the public API. Plain C++17; under nvcc the functions are host+device.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MOEBAL_PROBE_HD __host__ __device__ __forceinline__
#else
#define MOEBAL_PROBE_HD inline
#endif

namespace moebal::core::probe_detail {

constexpr int64_t kInfPs = int64_t(1) << 62;          // "unlimited" window
constexpr int64_t kMaxTransferPs = int64_t(1) << 50;  // ~19 min: never fits a finite window

MOEBAL_PROBE_HD int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#elif defined(__POPCNT__)
  return __builtin_popcountll(x);
#else  // portable builds have no popcnt instruction; this beats the libgcc call
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<int>((x * 0x0101010101010101ull) >> 56);
#endif
}

MOEBAL_PROBE_HD int ctz64(uint64_t x) {  // x != 0
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(x)) - 1;
#else
  return __builtin_ctzll(x);
#endif
}

MOEBAL_PROBE_HD int64_t round_ps(double us) {  // us * 1e6, rounded half to even
#if defined(__CUDA_ARCH__)
  return __double2ll_rn(us * 1e6);
#else
  return static_cast<int64_t>(__builtin_nearbyint(us * 1e6));
#endif
}

/// Converts a per-rank model time; -1 when not finite, negative or above max_us.
MOEBAL_PROBE_HD int64_t model_ps(double us, double max_us) {
  if (!(us >= 0.0 && us <= max_us)) return -1;  // also rejects NaN and inf
  return round_ps(us);
}

/// Converts a window: +inf means unlimited; -1 when NaN, negative, or finite above max_us.
MOEBAL_PROBE_HD int64_t window_ps(double us, double max_us) {
  if (us > max_us) return (us * 0.0) != 0.0 ? kInfPs : -1;  // inf * 0 is NaN; finite * 0 is 0
  if (!(us >= 0.0)) return -1;
  return round_ps(us);
}

/// n / k, n % k and src % k for a tier of k holders; a shift and masks when k is a power of two
/// (two holders: the common multi-copy case), where the division sits on the GPU's critical path.
MOEBAL_PROBE_HD void split_div(uint32_t n, unsigned k, int src, uint32_t* q, unsigned* rem, unsigned* rot) {
  if ((k & (k - 1)) == 0) {
    const unsigned sh = static_cast<unsigned>(ctz64(k));
    *q = n >> sh;
    *rem = n & (k - 1);
    *rot = static_cast<unsigned>(src) & (k - 1);
  } else {
    *q = n / k;
    *rem = n % k;
    *rot = static_cast<unsigned>(src) % k;
  }
}

/// Bit mask of the ranks on rank r's node.
MOEBAL_PROBE_HD uint64_t node_mask(int r, int ranks_per_node) {
  const int node = r / ranks_per_node;
  const uint64_t one_node = ranks_per_node >= 64 ? ~uint64_t(0) : ((uint64_t(1) << ranks_per_node) - 1);
  return one_node << (node * ranks_per_node);
}

/// Time one rank spends on one expert with n tokens: a + b n, and nothing for n == 0.
MOEBAL_PROBE_HD int64_t cost(int64_t n, int64_t a, int64_t b) { return n > 0 ? a + b * n : 0; }

/// init_quota with the source's node mask (node_mask(src, ranks_per_node)) given by the caller.
MOEBAL_PROBE_HD int64_t init_quota_nm(int64_t n, uint64_t holders, int src, int r, uint64_t src_node_mask) {
  if ((holders >> src) & 1) return r == src ? n : 0;
  if ((holders & (holders - 1)) == 0) return ((holders >> r) & 1) ? n : 0;
  uint64_t tier = holders & src_node_mask;
  if (tier == 0) tier = holders;
  if (!((tier >> r) & 1)) return 0;
  const unsigned k = static_cast<unsigned>(popcount64(tier));
  if (k == 1) return n;
  const unsigned j = static_cast<unsigned>(popcount64(tier & ((uint64_t(1) << r) - 1)));  // r's index in the tier
  uint32_t base;
  unsigned rem, rot;
  split_div(static_cast<uint32_t>(n), k, src, &base, &rem, &rot);  // counts are int32: 32-bit division
  const unsigned idx = j >= rot ? j - rot : j + k - rot;  // (j - src) mod k
  return static_cast<int64_t>(base) + (idx < rem ? 1 : 0);
}

/// Locality-first initial quota: tokens of (src, e) sent to rank r by the static placement.
/// A source holding e keeps them; otherwise they split evenly over e's holders on the source's node
/// (all holders when none is on it), the remainder going to holders in a rotation that starts at
/// src mod k so different sources spread their remainders.
MOEBAL_PROBE_HD int64_t init_quota(int64_t n, uint64_t holders, int src, int r, int ranks_per_node) {
  if ((holders >> src) & 1) return r == src ? n : 0;
  if ((holders & (holders - 1)) == 0) return ((holders >> r) & 1) ? n : 0;
  return init_quota_nm(n, holders, src, r, node_mask(src, ranks_per_node));
}

/// The same split as init_quota for every receiving rank at once: calls f(r, tokens) for each rank
/// r of the receiving tier (in ascending order), tokens possibly 0. Used where whole rows are built.
/// src_node_mask: node_mask(src, ranks_per_node), passed in because callers have it at hand.
template <class F>
MOEBAL_PROBE_HD void init_split(int64_t n, uint64_t holders, int src, uint64_t src_node_mask, F&& f) {
  if ((holders >> src) & 1) {
    f(src, n);
    return;
  }
  if ((holders & (holders - 1)) == 0) {  // one holder: the common case, no division
    f(ctz64(holders), n);
    return;
  }
  uint64_t tier = holders & src_node_mask;
  if (tier == 0) tier = holders;
  const unsigned k = static_cast<unsigned>(popcount64(tier));
  if (k == 1) {
    f(ctz64(tier), n);
    return;
  }
  uint32_t base;
  unsigned rem, rot;
  split_div(static_cast<uint32_t>(n), k, src, &base, &rem, &rot);  // counts are int32: 32-bit division
  for (unsigned j = 0; tier; ++j) {
    const int r = ctz64(tier);
    tier &= tier - 1;
    const unsigned idx = j >= rot ? j - rot : j + k - rot;  // (j - src) mod k
    f(r, static_cast<int64_t>(base) + (idx < rem ? 1 : 0));
  }
}

/// Water-filling between the bottleneck b and a helper d for one expert: the token amount x in
/// [1, pool] that minimises max(T_b'(x), T_d'(x)) (smallest such x), where
///   T_b'(x) = Tb - bb x - (x == mb ? ab : 0)   (draining the expert also saves its fixed time)
///   T_d'(x) = Td + bd x + (md == 0 ? ad : 0)   (a first token on d pays d's fixed time).
/// Returns the gain Tb - max(...) (<= 0 means no useful move) and x.
MOEBAL_PROBE_HD int64_t water_fill(int64_t Tb, int64_t Td, int64_t mb, int64_t md, int64_t pool,
                                   int64_t ab, int64_t bb, int64_t ad, int64_t bd, int64_t* x_out) {
  const int64_t c = Td + (md == 0 ? ad : 0);
  const int64_t s = bb + bd;
  int64_t xe;
  if (s > 0) {
    // Times are picoseconds, almost always below 2^32: the 32-bit division is exact there and much
    // cheaper than the 64-bit one on the GPU (where it sits on the planner's critical path).
    const uint64_t num = Tb > c ? static_cast<uint64_t>(Tb - c) : 0, den = static_cast<uint64_t>(s);
    xe = ((num | den) >> 32) == 0 ? static_cast<int64_t>(static_cast<uint32_t>(num) / static_cast<uint32_t>(den))
                                  : static_cast<int64_t>(num / den);
  } else {
    xe = Tb >= c ? pool : 0;
  }
  if (xe > pool) xe = pool;
  int64_t cand[3] = {xe, xe + 1, pool};
  int64_t best_x = 0, best_level = Tb;  // x = 0: no move
  for (int i = 0; i < 3; ++i) {
    const int64_t x = cand[i];
    if (x < 1 || x > pool) continue;
    const int64_t tb = Tb - bb * x - (x == mb ? ab : 0);
    const int64_t td = c + bd * x;
    const int64_t level = tb > td ? tb : td;
    if (level < best_level || (level == best_level && best_x != 0 && x < best_x)) {
      best_level = level;
      best_x = x;
    }
  }
  *x_out = best_x;
  return best_x == 0 ? 0 : Tb - best_level;
}

/// Transfer time between two ranks, given each rank's node.
MOEBAL_PROBE_HD int64_t transfer_ps(const int32_t* node, int w, int d, int64_t t_intra, int64_t t_inter) {
  return node[w] == node[d] ? t_intra : t_inter;
}

/// Read-only view of one layer's planner state (host or shared memory).
struct View {
  int R, E, S, ranks_per_node;
  const uint64_t* native;  // [E] ranks holding e in the static placement
  const uint64_t* extra;   // [E] ranks holding a planned replica of e
  const int32_t* m;        // [R, E] tokens of e processed on r
  const int32_t* loc;      // [R, E] of those, tokens whose source is r itself (pinned)
  const int64_t* T;        // [R] predicted compute time (ps)
  const int64_t* a;        // [R] fixed ps per expert
  const int64_t* b;        // [R] ps per token
  const int64_t* win;      // [R] hiding window (ps)
  const int64_t* in;       // [R] planned incoming transfer time (ps)
  const int64_t* out;      // [R] planned outgoing transfer time (ps)
  const int32_t* slots;    // [R] extra slots used
  const int32_t* node;     // [R] node of each rank (r / ranks_per_node)
  int64_t t_intra, t_inter, min_gain;
};

/// Ordering of candidate moves: larger gain first, then (sec ascending) moves that need no new
/// replica, lower expert id, lower helper rank. sec packs those tie-breakers.
MOEBAL_PROBE_HD uint64_t move_sec(bool needs_replica, int e, int d) {
  return (static_cast<uint64_t>(needs_replica) << 40) | (static_cast<uint64_t>(e) << 8) |
         static_cast<uint64_t>(d);
}
MOEBAL_PROBE_HD bool better(int64_t g1, uint64_t s1, int64_t g2, uint64_t s2) {
  return g1 > g2 || (g1 == g2 && s1 < s2);
}

/// Weight source for a new replica of e on d: the native holder with the shortest transfer, then the
/// least outgoing time already planned, then the lowest rank; `check_window` keeps only holders for
/// which both the sender's and d's planned transfer time stay within their windows. -1 if none.
MOEBAL_PROBE_HD int pick_source(const View& v, int e, int d, bool check_window, int64_t* t_out) {
  uint64_t h = v.native[e];
  int best = -1;
  int64_t bt = 0, bo = 0;
  while (h) {
    const int w = ctz64(h);
    h &= h - 1;
    const int64_t t = transfer_ps(v.node, w, d, v.t_intra, v.t_inter);
    if (check_window && (v.in[d] + t > v.win[d] || v.out[w] + t > v.win[w])) continue;
    if (best < 0 || t < bt || (t == bt && v.out[w] < bo)) {
      best = w;
      bt = t;
      bo = v.out[w];
    }
  }
  *t_out = bt;
  return best;
}

enum PairResult : int { kPairNone = 0, kPairOk = 1, kPairWindowBlocked = 2 };

/// Evaluates moving tokens of expert e from the bottleneck b to helper d (d != b). kPairNone when
/// there is nothing to move, no gain above min_gain, or d has no free extra slot; kPairWindowBlocked
/// when only the hiding window forbids the needed replica; kPairOk otherwise.
MOEBAL_PROBE_HD int eval_pair(const View& v, int bn, int e, int d, int64_t* gain, uint64_t* sec,
                              int64_t* x) {
  const size_t be = static_cast<size_t>(bn) * v.E + e, de = static_cast<size_t>(d) * v.E + e;
  const int64_t mb = v.m[be];
  const int64_t pool = mb - v.loc[be];
  if (pool <= 0) return kPairNone;
  const bool holds = (((v.native[e] | v.extra[e]) >> d) & 1) != 0;
  if (!holds && v.slots[d] >= v.S) return kPairNone;
  const int64_t g = water_fill(v.T[bn], v.T[d], mb, v.m[de], pool, v.a[bn], v.b[bn], v.a[d], v.b[d], x);
  if (g <= v.min_gain) return kPairNone;
  *gain = g;
  *sec = move_sec(!holds, e, d);
  if (holds) return kPairOk;
  int64_t t;
  return pick_source(v, e, d, true, &t) >= 0 ? kPairOk : kPairWindowBlocked;
}

/// Current quota of (src, e) on rank r: the initial split plus the recorded moves of e.
/// Moves k in [0, num_moves): expert mv_e[k] moved mv_amt[k * R + src] tokens of src from
/// mv_from[k] to mv_to[k].
MOEBAL_PROBE_HD int64_t current_quota(int64_t n, uint64_t holders, int src, int e, int r, int R,
                                      int ranks_per_node, int num_moves, const int32_t* mv_e,
                                      const int32_t* mv_from, const int32_t* mv_to,
                                      const int32_t* mv_amt) {
  int64_t q = init_quota(n, holders, src, r, ranks_per_node);
  for (int k = 0; k < num_moves; ++k) {
    if (mv_e[k] != e) continue;
    const int64_t amt = mv_amt[static_cast<size_t>(k) * R + src];
    if (mv_to[k] == r) q += amt;
    if (mv_from[k] == r) q -= amt;
  }
  return q;
}

/// Splits x tokens leaving the bottleneck bn for helper d over the sources, in locality order: d's
/// own tokens first (they become local), then sources on d's node, then the rest, ascending rank
/// within a tier; bn's own tokens are pinned. q[s] is the quota of (s, e) on bn; amt[s] receives
/// the tokens taken from source s. Requires x <= sum of q[s] over s != bn.
MOEBAL_PROBE_HD void take_tokens(const int64_t* q, int bn, int d, int R, int ranks_per_node, int64_t x,
                                 int32_t* amt) {
  for (int s = 0; s < R; ++s) amt[s] = 0;
  int64_t rem = x;
  const int dnode = d / ranks_per_node;
  for (int pass = 0; pass < 3 && rem > 0; ++pass) {
    for (int s = 0; s < R && rem > 0; ++s) {
      if (s == bn) continue;
      const bool near = s / ranks_per_node == dnode;
      if ((pass == 0) != (s == d)) continue;
      if (pass == 1 && !near) continue;
      if (pass == 2 && near) continue;
      const int64_t t = q[s] < rem ? q[s] : rem;
      amt[s] = static_cast<int32_t>(t);
      rem -= t;
    }
  }
}

/// take_tokens for one source, computed independently of the others (the GPU runs one per
/// thread): the tokens of sources ahead of src in the locality order are taken first.
/// node[r] is rank r's node (r / ranks_per_node).
MOEBAL_PROBE_HD int64_t take_from(const int64_t* q, int bn, int d, int R, const int32_t* node, int64_t x, int src) {
  if (src == bn) return 0;
  const int dnode = node[d];
  auto pos = [d, dnode, node](int s) { return s == d ? 0 : (((node[s] == dnode) ? 1 : 2) << 7) | s; };
  const int me = pos(src);
  int64_t ahead = 0;
  for (int s = 0; s < R; ++s)
    if (s != bn && pos(s) < me) ahead += q[s];
  const int64_t left = x - ahead;
  return left <= 0 ? 0 : (left < q[src] ? left : q[src]);
}

}  // namespace moebal::core::probe_detail
