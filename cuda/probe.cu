// PROBE planner kernels.
//
// probe_plan_kernel: one thread block per layer plans the layer. The state of a layer (holder masks,
// per-(rank, expert) tokens, per-rank times and transfer budgets, the move list, and the counts when
// they fit) lives in shared memory (or, for very large R * E, partly in a global workspace); every
// decision uses the integer helpers of probe_detail.h that the CPU reference also uses, and the best
// move of an iteration is the maximum of a strict total order, so the parallel search picks exactly
// the pair the CPU search picks. The block is built for latency (an online planner pays it per
// layer): each iteration is two block barriers apart; after the first, every warp reduces the warps'
// bests (warp redux, no serial scans), then warp 0 updates the times and finds the next bottleneck,
// warp 1 splits the tokens with warp scans and warp 2 records a replica, while the other warps go
// straight to the second barrier. Shared-memory offsets come from the host (kernel arguments), so
// every address is base + constant.
//
// probe_quota_kernel: the dense quota [R, E, R] per layer (4 MiB at R = 64, E = 256) is written by a
// second, GPU-wide grid, not by the planning block: its blocks write the locality-first default
// split of every row while the planner runs (launched as a programmatic dependent launch on sm_90,
// so they start as soon as the planner blocks are resident), then wait for the planner grid
// (griddepcontrol.wait) and rewrite the rows of the experts that moved from the move list the
// planner left in the workspace.
#include "moebal/core/probe_detail.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/probe.h"

#include <algorithm>
#include <cmath>
#include <mutex>

namespace moebal::cuda {
namespace {

namespace pd = core::probe_detail;
using core::kProbeNumStats;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxDevices = 64;
constexpr int kQuotaThreads = 256;
constexpr int kQuotaMaxTile = 1024;  // experts per quota block (shared holder masks)

// Rank masks the pair search reads instead of the transfer budgets: bit r of kRecvIntra is set
// while rank r can still receive an expert from its own node within its window (in[r] + t_intra <=
// win[r]), kRecvInter from another node; kSendIntra / kSendInter the same for sending (out[r]);
// kFullSlots: r has no free extra slot. Budgets only grow, so bits only clear (full: only set).
enum RankMask : int { kRecvIntra = 0, kRecvInter, kSendIntra, kSendInter, kFullSlots, kNumMasks };

// Control words in shared memory.
enum CtlWord : int { kCtlStatus = 0, kCtlNextBn = 1, kCtlSmall = 2, kCtlMulti = 3 };

// Below this every time and gain fits 32 bits (see `small` in the planner loop).
constexpr int64_t kSmallPs = int64_t(1) << 31;

// Where a layer's [R, E] arrays live: kStateGlobal (m, loc in the workspace, counts read from
// global memory), kStateShared (m, loc in shared memory), kStateAll (counts copied there too).
enum StateTier : int { kStateGlobal = 0, kStateShared = 1, kStateAll = 2 };

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~size_t(15); }

// Per-layer move list in the workspace (int32): what the quota kernel needs from the planner.
__host__ __device__ inline size_t moves_stride(int R, int K) {
  return (2 + 3 * static_cast<size_t>(K) + static_cast<size_t>(K) * R + 3) & ~size_t(3);
}

// Shared-memory carve-up. The byte offsets are computed once on the host and passed in the kernel
// arguments, so the device forms every address as base + constant: derived on the device, the
// aligned running sums were rematerialised (long dependent chains) at every use in the planner loop.
enum SmemArray : int {
  kNative, kExtra, kNmask, kWmask, kT, kT0, kA, kB, kWin, kIn, kOut, kTok, kTok0, kRedG, kRedX, kRedMb, kRedMd,
  kRedSec, kTotal, kCtl, kSlots, kNode, kRepE, kRepSrc, kMvE, kMvFrom, kMvTo, kMvPrev, kMvAmt, kEhead, kP2l,
  kMulti, kM, kLoc, kCnt, kNumArrays
};

struct SmemLayout {
  uint32_t off[kNumArrays];  // byte offset of each array (16-byte aligned)
};

// Row pitch of m and loc in shared memory: odd, so that a column (one expert, every rank: the pair
// search and the token split read those) falls in distinct banks.
__host__ __device__ inline int smem_pitch(int E) { return E | 1; }

// Row pitch of the counts in shared memory: a multiple of 4 (the copy from global memory takes int4
// rows) with an odd quotient when E is, so an expert's column spreads over 8 banks (at most a 4-way
// conflict instead of 32-way at E = 256); odd when rows cannot be copied as int4.
__host__ __device__ inline int cnt_pitch(int E) { return (E & 3) == 0 ? 4 * ((E / 4) | 1) : (E | 1); }

// Fills the offsets and returns the total bytes; m and loc take space from kStateShared on, the
// counts in kStateAll only.
inline size_t smem_layout(int R, int E, int S, int K, int num_slots, int tier, SmemLayout* L) {
  const size_t RS1 = static_cast<size_t>(R) * S + 1;
  size_t bytes[kNumArrays] = {};
  bytes[kNative] = bytes[kExtra] = 8 * static_cast<size_t>(E);
  bytes[kNmask] = 8 * static_cast<size_t>(R);
  bytes[kWmask] = 8 * kNumMasks;
  for (int i = kT; i <= kTok0; ++i) bytes[i] = 8 * static_cast<size_t>(R);
  for (int i = kRedG; i <= kRedMd; ++i) bytes[i] = 8 * kWarps;
  bytes[kRedSec] = 4 * kWarps;
  bytes[kTotal] = 8;
  bytes[kCtl] = 16;
  bytes[kSlots] = bytes[kNode] = 4 * static_cast<size_t>(R);
  bytes[kRepE] = bytes[kRepSrc] = 4 * RS1;
  for (int i = kMvE; i <= kMvPrev; ++i) bytes[i] = 4 * static_cast<size_t>(K + 1);
  bytes[kMvAmt] = 4 * static_cast<size_t>(K + 1) * R;
  bytes[kEhead] = 4 * static_cast<size_t>(E);
  bytes[kP2l] = 4 * static_cast<size_t>(num_slots);
  // At setup, the list of experts with several holders (each takes at least two slots).
  bytes[kMulti] = 4 * static_cast<size_t>(num_slots);
  if (tier >= kStateShared) bytes[kM] = bytes[kLoc] = 4 * static_cast<size_t>(R) * smem_pitch(E);
  if (tier == kStateAll) bytes[kCnt] = 4 * static_cast<size_t>(R) * cnt_pitch(E);
  size_t off = 0;
  for (int i = 0; i < kNumArrays; ++i) {
    if (L) L->off[i] = static_cast<uint32_t>(off);  // only launched when the total fits (< 4 GiB)
    off = align16(off + bytes[i]);
  }
  return off;
}

struct Smem {
  uint64_t *native, *extra, *nmask, *wmask;
  int64_t *T, *T0, *a, *b, *win, *in, *out, *tok, *tok0;
  int64_t *red_g, *red_x, *red_mb, *red_md;
  uint32_t* red_sec;
  int32_t *m, *loc, *cnt, *multi, *slots, *node, *p2l, *rep_e, *rep_src, *mv_e, *mv_from, *mv_to, *mv_prev, *mv_amt, *ehead;
  int32_t* ctl;  // [kCtlStatus], [kCtlNextBn], [kCtlSmall], [kCtlMulti]
  unsigned long long* total;
};

struct KernelArgs {
  int R, E, num_slots, spg, rpn, S, K;
  int64_t t_intra, t_inter, min_gain;
  const int32_t* counts;
  const int32_t* phy2log;
  const double* fixed_us;
  const double* us_per_token;
  const double* window_us;
  int32_t* replica_expert;
  int32_t* replica_src;
  double* rank_time_us;
  int64_t* rank_tokens;
  int32_t* stats;
  int32_t* moves;  // [L, moves_stride]: status, moves, mv_e[K], mv_from[K], mv_to[K], mv_amt[K, R]; null: no quota
  size_t moves_stride;
  int32_t* gws;  // [L, 2, R, E] when m/loc do not fit in shared memory, else null
  SmemLayout lay;
};

__device__ inline Smem bind_smem(unsigned char* base, const SmemLayout& L) {
  Smem s;
  auto at = [base, &L](int i) { return base + L.off[i]; };
  s.native = reinterpret_cast<uint64_t*>(at(kNative));
  s.extra = reinterpret_cast<uint64_t*>(at(kExtra));
  s.nmask = reinterpret_cast<uint64_t*>(at(kNmask));
  s.wmask = reinterpret_cast<uint64_t*>(at(kWmask));
  int64_t** r64[] = {&s.T, &s.T0, &s.a, &s.b, &s.win, &s.in, &s.out, &s.tok, &s.tok0, &s.red_g, &s.red_x, &s.red_mb, &s.red_md};
#pragma unroll
  for (int i = 0; i < 13; ++i) *r64[i] = reinterpret_cast<int64_t*>(at(kT + i));
  s.red_sec = reinterpret_cast<uint32_t*>(at(kRedSec));
  s.multi = reinterpret_cast<int32_t*>(at(kMulti));
  s.total = reinterpret_cast<unsigned long long*>(at(kTotal));
  s.ctl = reinterpret_cast<int32_t*>(at(kCtl));
  s.slots = reinterpret_cast<int32_t*>(at(kSlots));
  s.node = reinterpret_cast<int32_t*>(at(kNode));
  s.rep_e = reinterpret_cast<int32_t*>(at(kRepE));
  s.rep_src = reinterpret_cast<int32_t*>(at(kRepSrc));
  s.mv_e = reinterpret_cast<int32_t*>(at(kMvE));
  s.mv_from = reinterpret_cast<int32_t*>(at(kMvFrom));
  s.mv_to = reinterpret_cast<int32_t*>(at(kMvTo));
  s.mv_prev = reinterpret_cast<int32_t*>(at(kMvPrev));
  s.mv_amt = reinterpret_cast<int32_t*>(at(kMvAmt));
  s.ehead = reinterpret_cast<int32_t*>(at(kEhead));
  s.p2l = reinterpret_cast<int32_t*>(at(kP2l));
  s.m = reinterpret_cast<int32_t*>(at(kM));
  s.loc = reinterpret_cast<int32_t*>(at(kLoc));
  s.cnt = reinterpret_cast<int32_t*>(at(kCnt));
  return s;
}

// Warp-wide maximum of (g, then smallest sec): three redux instructions instead of a shuffle tree.
__device__ inline void warp_best(int64_t g, uint32_t sec, int64_t* G, uint32_t* SEC) {
  const int hi = static_cast<int>(g >> 32);
  const unsigned lo = static_cast<unsigned>(g);
  const int mhi = __reduce_max_sync(kFull, hi);
  const unsigned mlo = __reduce_max_sync(kFull, hi == mhi ? lo : 0u);
  *SEC = __reduce_min_sync(kFull, (hi == mhi && lo == mlo) ? sec : 0xffffffffu);
  *G = static_cast<int64_t>((static_cast<uint64_t>(static_cast<uint32_t>(mhi)) << 32) | mlo);
}

// The bottleneck: the rank with the largest time, the lowest rank among equals (the CPU's scan).
// Lane l holds T[l] in t0 and T[l + 32] in t1 (-1 beyond R); every lane gets the answer.
__device__ inline int warp_argmax(int64_t t0, int64_t t1, int lane) {
  int64_t t = t0;
  unsigned idx = static_cast<unsigned>(lane);
  if (t1 > t) {
    t = t1;
    idx += 32;
  }
  const int hi = static_cast<int>(t >> 32);
  const unsigned lo = static_cast<unsigned>(t);
  const int mhi = __reduce_max_sync(kFull, hi);
  const unsigned mlo = __reduce_max_sync(kFull, hi == mhi ? lo : 0u);
  return static_cast<int>(__reduce_min_sync(kFull, (hi == mhi && lo == mlo) ? idx : 0xffffffffu));
}

// warp_best when every g is in [-1, 2^31): two redux instead of three.
__device__ inline void warp_best_small(int64_t g, uint32_t sec, int64_t* G, uint32_t* SEC) {
  const unsigned key = static_cast<unsigned>(g + 1);
  const unsigned mk = __reduce_max_sync(kFull, key);
  *SEC = __reduce_min_sync(kFull, key == mk ? sec : 0xffffffffu);
  *G = static_cast<int64_t>(mk) - 1;
}

// warp_best_small when the block-uniform `small` flag says every g fits, warp_best otherwise.
__device__ inline void warp_best_of(bool small, int64_t g, uint32_t sec, int64_t* G, uint32_t* SEC) {
  if (small) {
    warp_best_small(g, sec, G, SEC);
  } else {
    warp_best(g, sec, G, SEC);
  }
}

// warp_argmax when every time is in [-1, 2^31).
__device__ inline int warp_argmax_small(int64_t t0, int64_t t1, int lane) {
  const unsigned k0 = static_cast<unsigned>(t0 + 1), k1 = static_cast<unsigned>(t1 + 1);
  const unsigned key = k1 > k0 ? k1 : k0, idx = k1 > k0 ? static_cast<unsigned>(lane) + 32 : static_cast<unsigned>(lane);
  const unsigned mk = __reduce_max_sync(kFull, key);
  return static_cast<int>(__reduce_min_sync(kFull, key == mk ? idx : 0xffffffffu));
}

__device__ inline int64_t warp_sum(int64_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

__device__ inline int32_t warp_inclusive_scan(int32_t v, int lane) {
  for (int off = 1; off < 32; off <<= 1) {
    const int32_t o = __shfl_up_sync(kFull, v, off);
    if (lane >= off) v += o;
  }
  return v;
}

// pd::take_from for every source at once (R <= 64; lane l has sources l and l + 32, quotas q[0],
// q[1]): the x tokens leave bn in locality order (d's own first, then d's node, then the rest,
// ascending rank within a tier), so a source gives x minus the quota of the sources ahead of it,
// clamped to its own quota. Tier totals come from warp sums, in-tier prefixes from warp scans.
// 32-bit arithmetic is exact: every partial sum is at most the layer's total tokens (< 2^31).
__device__ inline void warp_take_tokens(const int32_t q[2], int bn, int d, int R, const int32_t* node, int32_t x,
                                        int lane, int32_t amt[2]) {
  const int dnode = node[d];
  int tier[2];
  int32_t qv[2], near_incl[2], far_incl[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int s = lane + 32 * h;
    tier[h] = (s >= R || s == bn) ? -1 : s == d ? 0 : node[s] == dnode ? 1 : 2;
    qv[h] = tier[h] >= 0 ? q[h] : 0;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    near_incl[h] = warp_inclusive_scan(tier[h] == 1 ? qv[h] : 0, lane);
    far_incl[h] = warp_inclusive_scan(tier[h] == 2 ? qv[h] : 0, lane);
  }
  const int32_t near0 = __shfl_sync(kFull, near_incl[0], 31), far0 = __shfl_sync(kFull, far_incl[0], 31);
  const int32_t near_total = near0 + __shfl_sync(kFull, near_incl[1], 31);
  const int32_t own = __shfl_sync(kFull, d < 32 ? q[0] : q[1], d & 31);  // tier 0: d itself (d != bn)
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    int32_t ahead = 0;
    if (tier[h] == 1) ahead = own + (h ? near0 : 0) + near_incl[h] - qv[h];
    if (tier[h] == 2) ahead = own + near_total + (h ? far0 : 0) + far_incl[h] - qv[h];
    const int32_t left = x - ahead;
    amt[h] = tier[h] < 0 ? 0 : (left <= 0 ? 0 : (left < qv[h] ? left : qv[h]));
  }
}

// kTier is a template parameter so that, when the state is in shared memory, the compiler sees
// shared-memory pointers (native shared loads and atomics, not generic ones).
template <int kTier>
__global__ void __launch_bounds__(kThreads) probe_plan_kernel(KernelArgs p) {
  extern __shared__ __align__(16) unsigned char smem[];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The quota grid (a programmatic dependent launch) may start now: it waits for this grid's end
  // itself before it reads the move lists.
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  const int R = p.R, E = p.E, S = p.S, K = p.K, rpn = p.rpn;
  const int layer = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  Smem sm = bind_smem(smem, p.lay);
  const size_t RE = static_cast<size_t>(R) * E;
  const int ldm = kTier == kStateGlobal ? E : smem_pitch(E);  // row pitch of m and loc
  const size_t RM = static_cast<size_t>(R) * ldm;
  if constexpr (kTier == kStateGlobal) {
    sm.m = p.gws + static_cast<size_t>(layer) * 2 * RE;
    sm.loc = sm.m + RE;
  }
  const int32_t* counts = p.counts + layer * RE;
  const int32_t* cnt = kTier == kStateAll ? sm.cnt : counts;
  const int ldc = kTier == kStateAll ? cnt_pitch(E) : E;  // row pitch of cnt
  int32_t* mws = p.moves ? p.moves + static_cast<size_t>(layer) * p.moves_stride : nullptr;

  // 1. Clear the state, read the per-rank model, copy (or scan) the counts.
  int status = 0;
  uint64_t my_total = 0;
  if (tid == 0) {
    sm.ctl[kCtlStatus] = 0;
    sm.ctl[kCtlMulti] = 0;
    *sm.total = 0;
  }
  for (int e = tid; e < E; e += kThreads) {
    sm.native[e] = 0;
    sm.extra[e] = 0;
    sm.ehead[e] = -1;
  }
  for (int i = tid; i < R * S; i += kThreads) sm.rep_e[i] = sm.rep_src[i] = -1;
  for (int r = tid; r < R; r += kThreads) {
    sm.a[r] = pd::model_ps(p.fixed_us[r], core::kProbeMaxFixedUs);
    sm.b[r] = pd::model_ps(p.us_per_token[r], core::kProbeMaxUsPerToken);
    sm.win[r] = pd::window_ps(p.window_us[static_cast<size_t>(layer) * R + r], core::kProbeMaxWindowUs);
    if (sm.a[r] < 0 || sm.b[r] < 0) status |= core::kProbeBadModel;
    if (sm.win[r] < 0) status |= core::kProbeBadWindow;
    sm.in[r] = sm.out[r] = 0;
    sm.slots[r] = 0;
    sm.node[r] = r / rpn;
    sm.nmask[r] = pd::node_mask(r, rpn);
  }
  if (kTier != kStateGlobal && (RM & 3) == 0) {
    int4* m4 = reinterpret_cast<int4*>(sm.m);
    for (size_t i = tid; i < RM / 4; i += kThreads) m4[i] = make_int4(0, 0, 0, 0);
  } else {
    for (size_t i = tid; i < RM; i += kThreads) sm.m[i] = 0;
  }
  // The placement, loaded with everything else (the holder masks need a barrier after the clear).
  for (int s = tid; s < p.num_slots; s += kThreads) sm.p2l[s] = __ldg(p.phy2log + static_cast<size_t>(layer) * p.num_slots + s);
  auto count_one = [&](int32_t n) {
    if (n < 0) {
      status |= core::kProbeBadCounts;
    } else {
      my_total += static_cast<uint64_t>(n);
    }
  };
  // Loads in batches of kBatch per thread, all issued before any is used (one memory latency per
  // batch instead of one per element).
  constexpr int kBatch = 8;
  if (kTier == kStateAll && (reinterpret_cast<uintptr_t>(counts) & 15) == 0 && (E & 3) == 0) {
    // int4 rows: element (row, col4) of the source goes to row * ld4 + col4 (pitch cnt_pitch(E));
    // the position advances by kThreads int4 per step without a division.
    const int4* src = reinterpret_cast<const int4*>(counts);
    int4* dst = reinterpret_cast<int4*>(sm.cnt);
    const size_t n4 = RE / 4;
    const int E4 = E / 4, ld4 = ldc / 4, step_r = kThreads / E4, step_c = kThreads - step_r * E4;
    for (size_t i0 = tid; i0 < n4; i0 += static_cast<size_t>(kThreads) * kBatch) {
      int4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = i0 + static_cast<size_t>(u) * kThreads;
        v[u] = i < n4 ? __ldg(src + i) : make_int4(0, 0, 0, 0);
      }
      int row = static_cast<int>(i0 / E4), col = static_cast<int>(i0 - static_cast<size_t>(row) * E4);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = i0 + static_cast<size_t>(u) * kThreads;
        if (i < n4) dst[static_cast<size_t>(row) * ld4 + col] = v[u];
        col += step_c;
        row += step_r;
        if (col >= E4) col -= E4, ++row;
        count_one(v[u].x);
        count_one(v[u].y);
        count_one(v[u].z);
        count_one(v[u].w);
      }
    }
  } else {
    for (size_t i0 = tid; i0 < RE; i0 += static_cast<size_t>(kThreads) * kBatch) {
      int32_t v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = i0 + static_cast<size_t>(u) * kThreads;
        v[u] = i < RE ? __ldg(counts + i) : 0;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = i0 + static_cast<size_t>(u) * kThreads;
        if (kTier == kStateAll && i < RE) {
          const size_t r = i / E;
          sm.cnt[r * ldc + (i - r * E)] = v[u];
        }
        count_one(v[u]);
      }
    }
  }
  __syncthreads();

  // 2. Holder masks of the static placement.
  for (int s = tid; s < p.num_slots; s += kThreads) {
    const int e = sm.p2l[s];
    if (e < 0 || e >= E) {
      status |= core::kProbeBadPlacement;
    } else {
      atomicOr(reinterpret_cast<unsigned long long*>(&sm.native[e]), 1ull << (s / p.spg));
    }
  }
  __syncthreads();

  // 3. Locality-first initial assignment, by expert column, in two passes so that no warp mixes
  // single- and multi-holder experts (their per-element work differs several-fold; mixed in one
  // warp, every warp ran both). (a) `tpe` threads per expert take contiguous source ranges: loc of
  // every (source, expert), and a single-holder expert's column sum (all its tokens go to its
  // holder); experts with several holders are listed (sm.multi). (b) One warp
  // per listed expert, lanes over sources: pd::init_split of each source's tokens (holders keep
  // their own, pinned), per-holder register sums reduced with warp redux for up to four holders,
  // shared atomics for more. 32-bit sums: they wrap only when the layer's total exceeds INT32_MAX,
  // which is flagged below (the plan is dropped).
  {
    int tpe = 1;
    while (tpe < 32 && 2 * tpe * E <= kThreads) tpe *= 2;
    const int chunk = (R + tpe - 1) / tpe, part = tid % tpe, per_round = kThreads / tpe;
    const int s0 = min(R, part * chunk), s1 = min(R, s0 + chunk);
    for (int e0 = 0; e0 < E; e0 += per_round) {  // block-uniform trip count: every lane ballots
      const int e = e0 + tid / tpe;
      bool multi = false;
      if (e < E) {
        const uint64_t h = sm.native[e];
        if (h == 0) status |= core::kProbeBadPlacement;
        const bool single = h != 0 && (h & (h - 1)) == 0;
        multi = part == 0 && h != 0 && !single;
        uint32_t acc = 0;
#pragma unroll 4
        for (int s = s0; s < s1; ++s) {
          const int32_t n = cnt[static_cast<size_t>(s) * ldc + e];
          const bool mine = ((h >> s) & 1) != 0;
          sm.loc[static_cast<size_t>(s) * ldm + e] = (mine && n > 0) ? n : 0;
          acc += (single && n > 0) ? static_cast<uint32_t>(n) : 0u;
        }
        if (acc) atomicAdd(&sm.m[static_cast<size_t>(pd::ctz64(h)) * ldm + e], static_cast<int32_t>(acc));
      }
      const unsigned listed = __ballot_sync(kFull, multi);
      if (listed) {
        int base = 0;
        if (lane == 0) base = atomicAdd(&sm.ctl[kCtlMulti], __popc(listed));
        base = __shfl_sync(kFull, base, 0);
        if (multi) sm.multi[base + __popc(listed & ((1u << lane) - 1u))] = e;
      }
    }
  }
  __syncthreads();
  {
    const int num_multi = sm.ctl[kCtlMulti];
    for (int i = warp; i < num_multi; i += kWarps) {  // warp-uniform
      const int e = sm.multi[i];
      const uint64_t h = sm.native[e];
      int32_t* col = sm.m + e;
      const bool few = pd::popcount64(h) <= 4;
      uint32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;  // per holder of e, ascending rank
      for (int sb = 0; sb < R; sb += 32) {  // uniform trip count
        const int s = sb + lane;
        const int32_t n = s < R ? cnt[static_cast<size_t>(s) * ldc + e] : 0;
        if (n <= 0) continue;
        if (few) {
          pd::init_split(n, h, s, sm.nmask[s], [&](int r, int64_t v) {
            const int ix = pd::popcount64(h & ((uint64_t(1) << r) - 1));
            const uint32_t u = static_cast<uint32_t>(v);
            acc0 += ix == 0 ? u : 0u;
            acc1 += ix == 1 ? u : 0u;
            acc2 += ix == 2 ? u : 0u;
            acc3 += ix == 3 ? u : 0u;
          });
        } else {
          pd::init_split(n, h, s, sm.nmask[s], [col, ldm](int r, int64_t v) {
            if (v) atomicAdd(&col[static_cast<size_t>(r) * ldm], static_cast<int32_t>(v));
          });
        }
      }
      if (few) {  // this warp alone writes e's column (m is zero there)
        const uint32_t sum[4] = {__reduce_add_sync(kFull, acc0), __reduce_add_sync(kFull, acc1),
                                 __reduce_add_sync(kFull, acc2), __reduce_add_sync(kFull, acc3)};
        if (lane == 0) {
          uint64_t hh = h;
#pragma unroll
          for (int ix = 0; ix < 4; ++ix) {
            if (hh == 0) break;
            const int r = pd::ctz64(hh);
            hh &= hh - 1;
            col[static_cast<size_t>(r) * ldm] = static_cast<int32_t>(sum[ix]);
          }
        }
      }
    }
  }
  my_total = static_cast<uint64_t>(warp_sum(static_cast<int64_t>(my_total)));
  if (lane == 0 && my_total) atomicAdd(sm.total, static_cast<unsigned long long>(my_total));
  if (status) atomicOr(&sm.ctl[0], status);
  __syncthreads();
  if (*sm.total > 0x7fffffffull) status = core::kProbeBadCounts;
  status |= sm.ctl[0];

  const size_t RS = static_cast<size_t>(R) * S;
  if (status != 0) {  // uniform across the block: every thread read the same shared values
    for (int i = tid; i < 2 * R; i += kThreads) {
      if (p.rank_time_us) p.rank_time_us[static_cast<size_t>(layer) * 2 * R + i] = 0.0;
      if (p.rank_tokens) p.rank_tokens[static_cast<size_t>(layer) * 2 * R + i] = 0;
    }
    for (size_t i = tid; i < RS; i += kThreads) {
      if (p.replica_expert) p.replica_expert[layer * RS + i] = -1;
      if (p.replica_src) p.replica_src[layer * RS + i] = -1;
    }
    if (tid < kProbeNumStats)
      p.stats[static_cast<size_t>(layer) * kProbeNumStats + tid] = tid == core::kProbeStatStatus ? status : 0;
    if (mws && tid == 0) {
      mws[0] = status;
      mws[1] = 0;
    }
    return;
  }

  // 4. Per-rank time and tokens: a group of `tpr` lanes per rank (a power of two, at most 32; all
  // ranks at once when R * tpr <= kThreads). Rank masks (the last warp).
  if (warp == kWarps - 1) {
    uint64_t mk[kNumMasks] = {};
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = lane + 32 * hh;
      const bool in_range = r < R;
      const int64_t w = in_range ? sm.win[r] : -1;
      const uint64_t ri = __ballot_sync(kFull, in_range && p.t_intra <= w);
      const uint64_t re = __ballot_sync(kFull, in_range && p.t_inter <= w);
      const uint64_t fs = __ballot_sync(kFull, in_range && S == 0);
      mk[kRecvIntra] |= ri << (32 * hh);
      mk[kRecvInter] |= re << (32 * hh);
      mk[kFullSlots] |= fs << (32 * hh);
    }
    if (lane == 0) {
      sm.wmask[kRecvIntra] = sm.wmask[kSendIntra] = mk[kRecvIntra];  // nothing sent or received yet
      sm.wmask[kRecvInter] = sm.wmask[kSendInter] = mk[kRecvInter];
      sm.wmask[kFullSlots] = mk[kFullSlots];
    }
  }
  {
    int tpr = 32;
    while (tpr > 1 && tpr * R > kThreads) tpr >>= 1;
    const int groups = kThreads / tpr, grp = tid / tpr, c = tid & (tpr - 1);
    for (int r0 = 0; r0 < R; r0 += groups) {  // block-uniform trip count: every lane shuffles
      const int r = r0 + grp;
      // The sum of pd::cost(v, a, b) over the row is a * (experts with tokens) + b * (tokens): 32-bit
      // counts in the loop (the layer's total is below 2^31 here), one 64-bit product pair at the end.
      uint32_t n = 0, nz = 0;
      if (r < R) {
        const int32_t* row = sm.m + static_cast<size_t>(r) * ldm;
#pragma unroll 8
        for (int e = c; e < E; e += tpr) {
          const int32_t v = row[e];
          n += static_cast<uint32_t>(v);
          nz += v > 0 ? 1u : 0u;
        }
      }
      for (int off = tpr / 2; off > 0; off >>= 1) {  // within the group: aligned lanes of one warp
        n += __shfl_xor_sync(kFull, n, off);
        nz += __shfl_xor_sync(kFull, nz, off);
      }
      if (r < R && c == 0) {
        const int64_t t = sm.a[r] * static_cast<int64_t>(nz) + sm.b[r] * static_cast<int64_t>(n);
        sm.T[r] = sm.T0[r] = t;
        sm.tok[r] = sm.tok0[r] = static_cast<int64_t>(n);
      }
    }
  }
  __syncthreads();

  // 5. The loop. Warp 0 keeps the per-rank times in registers (lane l: ranks l and l + 32) and
  // finds the next bottleneck with warp reductions while warps 1 and 2 apply the move; the shared
  // copy serves the pair evaluation.
  // (for pd::pick_source only: m and loc, rows of pitch ldm here, stay out of the view)
  const pd::View v{R, E, S, rpn, sm.native, sm.extra, nullptr, nullptr, sm.T, sm.a, sm.b, sm.win, sm.in, sm.out,
                   sm.slots, sm.node, p.t_intra, p.t_inter, p.min_gain};
  int64_t t0 = lane < R ? sm.T[lane] : -1, t1 = lane + 32 < R ? sm.T[lane + 32] : -1;
  // While every time is below 2^31 ps (2.1 ms; always, in practice) the gains (never above the
  // bottleneck's time) and times fit 32 bits and the reductions take one redux fewer. The flag is
  // block-uniform: every warp holds all times, and a move changes two times every thread knows.
  bool small = __all_sync(kFull, t0 < kSmallPs && t1 < kSmallPs);
  int bn = small ? warp_argmax_small(t0, t1, lane) : warp_argmax(t0, t1, lane);
  int nm = 0, blocked = 0, new_replicas = 0;
  // Candidate pairs: the experts bn holds (its static slots, then its replicas) x helpers. Only those
  // can have movable tokens on bn, so this is the same set of pairs as all E x R. Pair i is
  // (slot j = i / R of bn, helper d = i % R); the division is done once, outside the loop.
  const int spg = p.spg;
  const int pairs = (spg + S) * R;
  const int j_first = tid / R, d_first = tid - j_first * R, j_step = kThreads / R, d_step = kThreads - j_step * R;
  const int64_t min_gain = p.min_gain;
  for (int k = 0; k < K; ++k) {
    // Phase 1: every thread evaluates its pair(s); each warp's best goes to shared memory, written
    // by the lane that holds it (with the amount and the two token counts phase 2 needs).
    // Block-uniform values first (independent loads, issued together).
    const int64_t Tb = sm.T[bn];
    const int64_t ab = sm.a[bn], bb = sm.b[bn];
    const uint64_t recv_intra = sm.wmask[kRecvIntra], recv_inter = sm.wmask[kRecvInter];
    const uint64_t send_intra = sm.wmask[kSendIntra], send_inter = sm.wmask[kSendInter], full = sm.wmask[kFullSlots];
    const int bn_reps = sm.slots[bn];
    int64_t g = -1, x = 0, kg = -1;
    uint32_t sec = 0xffffffffu, ksec = 0xffffffffu;
    int32_t bmb = 0, bmd = 0;
    for (int i = tid, j = j_first, d = d_first; i < pairs;
         i += kThreads, j += j_step + (d + d_step >= R ? 1 : 0), d = d + d_step >= R ? d + d_step - R : d + d_step) {
      if (d == bn) continue;
      int e;
      if (j < spg) {
        e = sm.p2l[bn * spg + j];
      } else {
        if (j - spg >= bn_reps) continue;
        e = sm.rep_e[bn * S + (j - spg)];
      }
      // pd::eval_pair with the window test on holder masks (the same answer as pd::pick_source >= 0:
      // a native holder on d's node with both intra-node budgets, or one elsewhere with both
      // inter-node budgets).
      const int32_t mb = sm.m[static_cast<size_t>(bn) * ldm + e], lb = sm.loc[static_cast<size_t>(bn) * ldm + e];
      const uint64_t hn = sm.native[e], hx = sm.extra[e];
      const int32_t md = sm.m[static_cast<size_t>(d) * ldm + e];
      const int64_t Td = sm.T[d], ad = sm.a[d], bdd = sm.b[d];
      const uint64_t dnode = sm.nmask[d];
      const int32_t pool = mb - lb;
      if (pool <= 0) continue;
      const bool holds = (((hn | hx) >> d) & 1) != 0;
      if (!holds && ((full >> d) & 1)) continue;
      int64_t px = 0;
      const int64_t pg = pd::water_fill(Tb, Td, mb, md, pool, ab, bb, ad, bdd, &px);
      if (pg <= min_gain) continue;
      const uint32_t s32 = (static_cast<uint32_t>(!holds) << 22) | (static_cast<uint32_t>(e) << 6) | static_cast<uint32_t>(d);
      const bool ok = holds || ((((recv_intra >> d) & 1) && (hn & dnode & send_intra)) ||
                                (((recv_inter >> d) & 1) && (hn & ~dnode & send_inter)));
      if (ok) {
        if (pd::better(pg, s32, g, sec)) g = pg, sec = s32, x = px, bmb = mb, bmd = md;
      } else {
        if (pd::better(pg, s32, kg, ksec)) kg = pg, ksec = s32;
      }
    }
    int64_t G;
    uint32_t SEC;
    warp_best_of(small, g, sec, &G, &SEC);
    if (G >= 0) {
      if (g == G && sec == SEC) {  // the (unique up to duplicate static copies) best lane
        sm.red_g[warp] = G;
        sm.red_sec[warp] = SEC;
        sm.red_x[warp] = x;
        sm.red_mb[warp] = bmb;
        sm.red_md[warp] = bmd;
      }
    } else if (lane == 0) {
      sm.red_g[warp] = -1;
      sm.red_sec[warp] = 0xffffffffu;
    }
    __syncthreads();

    // Phase 2: every warp reduces the warps' bests; window-blocked pairs that beat the best are
    // counted through the barrier's predicate.
    const int64_t gw = lane < kWarps ? sm.red_g[lane] : -1;
    const uint32_t sw = lane < kWarps ? sm.red_sec[lane] : 0xffffffffu;
    warp_best_of(small, gw, sw, &G, &SEC);
    const bool beaten = kg >= 0 && (G < 0 || pd::better(kg, ksec, G, SEC));
    if (G < 0) {
      if (__syncthreads_or(beaten) && tid == 0) ++blocked;
      break;  // uniform: every thread reduced the same values
    }
    // Three warps apply the move side by side (each field has one writer, and no warp reads what
    // another writes in this phase): warp 0 the times and token counts and the next bottleneck,
    // warp 1 the token split and the move list, warp 2 the replica. The other warps go straight
    // to the barrier (they would only compete for issue slots) and read the next bottleneck after it.
    const int wsel = __ffs(__ballot_sync(kFull, lane < kWarps && gw == G && sw == SEC)) - 1;
    const int e = static_cast<int>((SEC >> 6) & 0xffffu), d = static_cast<int>(SEC & 63u);
    const bool needs_replica = (SEC >> 22) != 0;
    if (warp == 0) {
      const int64_t mx = sm.red_x[wsel], mb = sm.red_mb[wsel], md = sm.red_md[wsel];
      const int64_t ad = sm.a[d], bdd = sm.b[d];
      const int64_t Td = __shfl_sync(kFull, d < 32 ? t0 : t1, d & 31);
      const int64_t nTb = Tb - pd::cost(mb, ab, bb) + pd::cost(mb - mx, ab, bb);
      const int64_t nTd = Td - pd::cost(md, ad, bdd) + pd::cost(md + mx, ad, bdd);
      if (lane == (bn & 31)) (bn < 32 ? t0 : t1) = nTb;
      if (lane == (d & 31)) (d < 32 ? t0 : t1) = nTd;
      small = small && nTb < kSmallPs && nTd < kSmallPs;
      const int next_bn = small ? warp_argmax_small(t0, t1, lane) : warp_argmax(t0, t1, lane);
      if (lane == 0) {
        sm.m[static_cast<size_t>(bn) * ldm + e] = static_cast<int32_t>(mb - mx);
        sm.m[static_cast<size_t>(d) * ldm + e] = static_cast<int32_t>(md + mx);
        sm.T[bn] = nTb;
        sm.T[d] = nTd;
        sm.tok[bn] -= mx;
        sm.tok[d] += mx;
        sm.ctl[kCtlNextBn] = next_bn;
        sm.ctl[kCtlSmall] = small;
      }
    } else if (warp == 1) {
      const int64_t mx = sm.red_x[wsel];
      // The tokens leave bn in locality order: q = the current quota of (s, e) on bn for every
      // source s (the initial split plus the earlier moves of e, a per-expert linked list).
      const uint64_t h = sm.native[e];
      const int head = sm.ehead[e];
      int32_t q[2], amt[2];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int s = lane + 32 * hh;
        q[hh] = s < R ? static_cast<int32_t>(pd::init_quota_nm(cnt[static_cast<size_t>(s) * ldc + e], h, s, bn, sm.nmask[s])) : 0;
      }
      for (int kk = head; kk >= 0; kk = sm.mv_prev[kk]) {  // both halves in one walk
        const int32_t* row = sm.mv_amt + static_cast<size_t>(kk) * R;
        const int to = sm.mv_to[kk], from = sm.mv_from[kk];
        const int32_t a0 = lane < R ? row[lane] : 0, a1 = lane + 32 < R ? row[lane + 32] : 0;
        if (to == bn) q[0] += a0, q[1] += a1;
        if (from == bn) q[0] -= a0, q[1] -= a1;
      }
      warp_take_tokens(q, bn, d, R, sm.node, static_cast<int32_t>(mx), lane, amt);
      int32_t* row = sm.mv_amt + static_cast<size_t>(nm) * R;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int s = lane + 32 * hh;
        if (s < R) row[s] = amt[hh];
        if (s == d) sm.loc[static_cast<size_t>(d) * ldm + e] += amt[hh];
      }
      __syncwarp();  // every lane has walked e's move list before lane 0 extends it
      if (lane == 0) {
        sm.mv_e[nm] = e;
        sm.mv_from[nm] = bn;
        sm.mv_to[nm] = d;
        sm.mv_prev[nm] = head;
        sm.ehead[e] = nm;
      }
    } else if (warp == 2) {
      if (lane == 0 && needs_replica) {
        int64_t t = 0;
        const int src = pd::pick_source(v, e, d, true, &t);
        sm.rep_e[d * S + sm.slots[d]] = e;
        sm.rep_src[d * S + sm.slots[d]] = src;
        const int used = ++sm.slots[d];
        sm.extra[e] |= 1ull << d;
        const int64_t in_d = sm.in[d] += t, out_src = sm.out[src] += t;
        ++new_replicas;
        // The window masks of the two ranks whose budgets changed.
        const uint64_t bd_bit = 1ull << d, bs_bit = 1ull << src;
        const int64_t win_d = sm.win[d], win_s = sm.win[src];
        sm.wmask[kRecvIntra] = in_d + p.t_intra <= win_d ? sm.wmask[kRecvIntra] : sm.wmask[kRecvIntra] & ~bd_bit;
        sm.wmask[kRecvInter] = in_d + p.t_inter <= win_d ? sm.wmask[kRecvInter] : sm.wmask[kRecvInter] & ~bd_bit;
        sm.wmask[kSendIntra] = out_src + p.t_intra <= win_s ? sm.wmask[kSendIntra] : sm.wmask[kSendIntra] & ~bs_bit;
        sm.wmask[kSendInter] = out_src + p.t_inter <= win_s ? sm.wmask[kSendInter] : sm.wmask[kSendInter] & ~bs_bit;
        if (used >= S) sm.wmask[kFullSlots] |= bd_bit;
      }
    }
    ++nm;
    if (__syncthreads_or(beaten) && tid == 0) ++blocked;
    bn = sm.ctl[kCtlNextBn];
    small = sm.ctl[kCtlSmall] != 0;
  }

  // 6. Outputs; the move list goes to the workspace for the quota kernel.
  for (size_t i = tid; i < RS; i += kThreads) {
    if (p.replica_expert) p.replica_expert[layer * RS + i] = sm.rep_e[i];
    if (p.replica_src) p.replica_src[layer * RS + i] = sm.rep_src[i];
  }
  for (int r = tid; r < R; r += kThreads) {
    const size_t b0 = static_cast<size_t>(layer) * 2 * R + r, b1 = b0 + R;
    if (p.rank_time_us) {
      p.rank_time_us[b0] = static_cast<double>(sm.T0[r]) * 1e-6;
      p.rank_time_us[b1] = static_cast<double>(sm.T[r]) * 1e-6;
    }
    if (p.rank_tokens) {
      p.rank_tokens[b0] = sm.tok0[r];
      p.rank_tokens[b1] = sm.tok[r];
    }
  }
  int32_t* st = p.stats + static_cast<size_t>(layer) * kProbeNumStats;
  if (tid == 0) {
    st[core::kProbeStatMoves] = nm;
    st[core::kProbeStatWindowBlocked] = blocked;
    st[core::kProbeStatStatus] = 0;
  } else if (tid == 64) {  // warp 2's lane 0 made the replicas
    st[core::kProbeStatNewReplicas] = new_replicas;
  }
  if (mws) {
    if (tid == 0) {
      mws[0] = 0;
      mws[1] = nm;
    }
    int32_t* me = mws + 2;
    for (int i = tid; i < nm; i += kThreads) {
      me[i] = sm.mv_e[i];
      me[K + i] = sm.mv_from[i];
      me[2 * K + i] = sm.mv_to[i];
    }
    for (int i = tid; i < nm * R; i += kThreads) me[3 * K + i] = sm.mv_amt[i];
  }
}

// Dense quota of `tiles` expert tiles per layer, one block per (layer, tile): the default split of
// every row first (independent of the plan), then, after the planner grid, the moves of the tile's
// experts as deltas (atomics: several moves may touch one entry). A row is written by a group of
// `lanes` threads (a power of two, at most 32, the first >= R), coalesced.
struct QuotaArgs {
  int R, E, num_slots, spg, rpn, K, tiles, tile, lanes;
  const int32_t* counts;
  const int32_t* phy2log;
  const int32_t* moves;
  size_t moves_stride;
  int32_t* quota;
};

__global__ void __launch_bounds__(kQuotaThreads) probe_quota_kernel(QuotaArgs p) {
  __shared__ uint64_t hold[kQuotaMaxTile];
  const int R = p.R, E = p.E, rpn = p.rpn, tid = threadIdx.x;
  const int layer = blockIdx.x / p.tiles, tile = blockIdx.x - layer * p.tiles;
  const int e0 = tile * p.tile, ne = min(p.tile, E - e0);
  const size_t RE = static_cast<size_t>(R) * E;
  const int32_t* counts = p.counts + layer * RE;
  const int32_t* p2l = p.phy2log + static_cast<size_t>(layer) * p.num_slots;
  int32_t* quota = p.quota + layer * RE * R;
  for (int i = tid; i < ne; i += kQuotaThreads) hold[i] = 0;
  __syncthreads();
  for (int s = tid; s < p.num_slots; s += kQuotaThreads) {
    const int e = p2l[s];
    if (e >= e0 && e < e0 + ne) atomicOr(reinterpret_cast<unsigned long long*>(&hold[e - e0]), 1ull << (s / p.spg));
  }
  __syncthreads();
  const int lanes = p.lanes, groups = kQuotaThreads / lanes, group = tid / lanes, c = tid - group * lanes;
  const int rows = R * ne;
  for (int rw = group; rw < rows; rw += groups) {
    const int s = rw / ne, el = rw - s * ne;
    const size_t row = static_cast<size_t>(s) * E + e0 + el;
    const int32_t n = counts[row];
    const uint64_t h = hold[el];
    int32_t* out = quota + row * R;
    for (int r = c; r < R; r += lanes) out[r] = n > 0 ? static_cast<int32_t>(pd::init_quota(n, h, s, r, rpn)) : 0;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");  // the planner grid has finished (no-op without PDL)
#endif
  const int32_t* mws = p.moves + static_cast<size_t>(layer) * p.moves_stride;
  const int status = mws[0], nm = mws[1];
  if (status != 0) {  // a layer with bad input values gets an all-zero quota (same entries, same threads)
    for (int rw = group; rw < rows; rw += groups) {
      const int s = rw / ne, el = rw - s * ne;
      int32_t* out = quota + (static_cast<size_t>(s) * E + e0 + el) * R;
      for (int r = c; r < R; r += lanes) out[r] = 0;
    }
    return;
  }
  __threadfence();
  __syncthreads();  // the default values above are in place before any delta below
  const int32_t *mv_e = mws + 2, *mv_from = mv_e + p.K, *mv_to = mv_from + p.K, *mv_amt = mv_to + p.K;
  for (int j = tid; j < nm * R; j += kQuotaThreads) {
    const int k = j / R, s = j - k * R, e = mv_e[k];
    if (e < e0 || e >= e0 + ne) continue;
    const int32_t a = mv_amt[j];  // row k, source s
    if (a == 0) continue;
    int32_t* out = quota + (static_cast<size_t>(s) * E + e) * R;
    atomicAdd(out + mv_to[k], a);
    atomicSub(out + mv_from[k], a);
  }
}

struct DeviceInfo {
  int sms = 0, major = 0, max_optin_smem = 0;
};

// Per-device attributes, queried once per device.
const DeviceInfo& device_info() {
  static std::mutex mu;
  static DeviceInfo info[kMaxDevices];
  static bool known[kMaxDevices] = {};
  int dev = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&dev));
  MOEBAL_CHECK(dev >= 0 && dev < kMaxDevices, "probe: device ordinal ", dev, " beyond ", kMaxDevices);
  std::lock_guard<std::mutex> lock(mu);
  if (!known[dev]) {
    MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&info[dev].sms, cudaDevAttrMultiProcessorCount, dev));
    MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&info[dev].major, cudaDevAttrComputeCapabilityMajor, dev));
    MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&info[dev].max_optin_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    known[dev] = true;
  }
  return info[dev];
}

// Shared-memory bytes and state tier: everything in shared memory if it fits, else the counts read
// from global memory, else m/loc in the global workspace too.
void plan_smem(const core::ProbeConfig& c, size_t* bytes, int* tier) {
  const size_t limit = static_cast<size_t>(device_info().max_optin_smem);
  for (int t = kStateAll; t >= kStateGlobal; --t) {
    *tier = t;
    *bytes = smem_layout(c.num_ranks, c.num_experts, c.max_extra_slots, c.max_iters, c.num_slots, t, nullptr);
    if (*bytes <= limit) return;
  }
  MOEBAL_CHECK_ARG(false, "probe: per-layer state needs ", *bytes, " bytes of shared memory; the device allows ",
                   limit, " (reduce max_iters, max_extra_slots or num_experts)");
}

// The kernel's dynamic shared-memory limit is a per-device attribute: raise it once per device and
// size (monotonically), outside any graph capture the caller may start later.
void (*plan_kernel(int tier))(KernelArgs) {
  return tier == kStateAll ? probe_plan_kernel<kStateAll>
                           : tier == kStateShared ? probe_plan_kernel<kStateShared> : probe_plan_kernel<kStateGlobal>;
}

void raise_smem_limit(int tier, int bytes) {
  if (bytes <= 48 * 1024) return;
  static std::mutex mu;
  static int configured[kMaxDevices][3] = {};
  int dev = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&dev));
  MOEBAL_CHECK(dev >= 0 && dev < kMaxDevices, "probe: device ordinal ", dev, " beyond ", kMaxDevices);
  std::lock_guard<std::mutex> lock(mu);
  if (bytes <= configured[dev][tier]) return;
  MOEBAL_CHECK_CUDA(cudaFuncSetAttribute(plan_kernel(tier), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  configured[dev][tier] = bytes;
}

size_t gws_bytes(const core::ProbeConfig& cfg, int32_t num_layers, int tier) {
  return tier == kStateGlobal
             ? static_cast<size_t>(num_layers) * 2 * sizeof(int32_t) * cfg.num_ranks * cfg.num_experts
             : 0;
}

size_t moves_bytes(const core::ProbeConfig& cfg, int32_t num_layers) {
  return static_cast<size_t>(num_layers) * sizeof(int32_t) * moves_stride(cfg.num_ranks, cfg.max_iters);
}

}  // namespace

size_t probe_plan_workspace_bytes(const core::ProbeConfig& cfg, int32_t num_layers) {
  cfg.validate();
  MOEBAL_CHECK_ARG(num_layers >= 0, "probe: num_layers must be >= 0, got ", num_layers);
  size_t bytes = 0;
  int tier = kStateAll;
  plan_smem(cfg, &bytes, &tier);
  return moves_bytes(cfg, num_layers) + gws_bytes(cfg, num_layers, tier);
}

void probe_plan(const core::ProbeConfig& cfg, int32_t num_layers, const core::ProbeInputs& in,
                const core::ProbeOutputs& out, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  cfg.validate();
  MOEBAL_CHECK_ARG(num_layers >= 0, "probe: num_layers must be >= 0, got ", num_layers);
  if (num_layers == 0) return;
  MOEBAL_CHECK_ARG(in.counts && in.phy2log && in.fixed_us && in.us_per_token && in.window_us,
                   "probe: every input pointer (counts, phy2log, fixed_us, us_per_token, window_us) is required");
  MOEBAL_CHECK_ARG(out.stats != nullptr, "probe: stats is required on the GPU (it carries the input status)");
  MOEBAL_CHECK_ARG(out.quota_entries == nullptr && out.num_quota_entries == nullptr,
                   "probe: the sparse quota (quota_entries, num_quota_entries) is CPU only; use the dense quota on "
                   "the GPU, or moebal::core::probe_plan");
  size_t smem_bytes = 0;
  int tier = kStateAll;
  plan_smem(cfg, &smem_bytes, &tier);
  const size_t mvb = moves_bytes(cfg, num_layers), need = mvb + gws_bytes(cfg, num_layers, tier);
  MOEBAL_CHECK_ARG(workspace != nullptr && workspace_bytes >= need, "probe: workspace of ", workspace_bytes,
                   " bytes is too small; probe_plan_workspace_bytes() = ", need);
  MOEBAL_CHECK_ARG((reinterpret_cast<uintptr_t>(workspace) & 15) == 0, "probe: workspace must be 16-byte aligned");

  raise_smem_limit(tier, static_cast<int>(smem_bytes));
  KernelArgs a{};
  a.R = cfg.num_ranks;
  a.E = cfg.num_experts;
  a.num_slots = cfg.num_slots;
  a.spg = cfg.num_slots / cfg.num_ranks;
  a.rpn = cfg.nodes_ranks();
  a.S = cfg.max_extra_slots;
  a.K = cfg.max_iters;
  a.t_intra = core::probe_transfer_ps(cfg.expert_bytes, cfg.intra_node_GBps);
  a.t_inter = a.rpn == a.R ? a.t_intra : core::probe_transfer_ps(cfg.expert_bytes, cfg.inter_node_GBps);
  a.min_gain = pd::round_ps(cfg.min_gain_us);
  a.counts = in.counts;
  a.phy2log = in.phy2log;
  a.fixed_us = in.fixed_us;
  a.us_per_token = in.us_per_token;
  a.window_us = in.window_us;
  a.replica_expert = out.replica_expert;
  a.replica_src = out.replica_src;
  a.rank_time_us = out.rank_time_us;
  a.rank_tokens = out.rank_tokens;
  a.stats = out.stats;
  a.moves = out.quota ? static_cast<int32_t*>(workspace) : nullptr;
  a.moves_stride = moves_stride(a.R, a.K);
  a.gws = tier == kStateGlobal ? reinterpret_cast<int32_t*>(static_cast<unsigned char*>(workspace) + mvb) : nullptr;
  smem_layout(a.R, a.E, a.S, a.K, a.num_slots, tier, &a.lay);
  plan_kernel(tier)<<<num_layers, kThreads, smem_bytes, stream>>>(a);
  MOEBAL_CHECK_LAUNCH();
  if (out.quota == nullptr) return;

  // The dense quota over the whole GPU: about four blocks per SM in all, at most kQuotaMaxTile
  // experts per block.
  const DeviceInfo& dev = device_info();
  QuotaArgs q{};
  q.R = a.R;
  q.E = a.E;
  q.num_slots = a.num_slots;
  q.spg = a.spg;
  q.rpn = a.rpn;
  q.K = a.K;
  const int64_t want = std::max<int64_t>(1, (4 * static_cast<int64_t>(dev.sms) + num_layers - 1) / num_layers);
  const int64_t tiles0 = std::min<int64_t>(want, a.E);
  q.tile = static_cast<int>(std::min<int64_t>(kQuotaMaxTile, (a.E + tiles0 - 1) / tiles0));
  q.tiles = (a.E + q.tile - 1) / q.tile;
  q.lanes = 1;
  while (q.lanes < 32 && q.lanes < a.R) q.lanes *= 2;
  q.counts = in.counts;
  q.phy2log = in.phy2log;
  q.moves = a.moves;
  q.moves_stride = a.moves_stride;
  q.quota = out.quota;
  const int64_t blocks = static_cast<int64_t>(q.tiles) * num_layers;
  MOEBAL_CHECK_ARG(blocks <= 0x7fffffff, "probe: ", num_layers, " layers need too many quota blocks");
  cudaLaunchConfig_t lc{};
  lc.gridDim = dim3(static_cast<unsigned>(blocks));
  lc.blockDim = dim3(kQuotaThreads);
  lc.dynamicSmemBytes = 0;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  lc.attrs = attr;
  lc.numAttrs = dev.major >= 9 ? 1 : 0;  // programmatic dependent launch: sm_90 and newer
  MOEBAL_CHECK_CUDA(cudaLaunchKernelEx(&lc, probe_quota_kernel, q));
}

}  // namespace moebal::cuda
