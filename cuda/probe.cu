// PROBE planner kernel: one thread block per layer. The state of a layer (holder masks, per
// (rank, expert) tokens, per-rank times and transfer budgets, the move list) lives in shared memory
// (or, for very large R * E, in a global workspace); every decision uses the integer helpers of
// probe_detail.h that the CPU reference also uses, and the best move of an iteration is the maximum
// of a strict total order, so the parallel search picks exactly the pair the CPU search picks.
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

struct KernelArgs {
  int R, E, num_slots, spg, rpn, S, K;
  int64_t t_intra, t_inter, min_gain;
  const int32_t* counts;
  const int32_t* phy2log;
  const double* fixed_us;
  const double* us_per_token;
  const double* window_us;
  int32_t* quota;
  int32_t* replica_expert;
  int32_t* replica_src;
  double* rank_time_us;
  int64_t* rank_tokens;
  int32_t* stats;
  int32_t* gws;  // [L, 2, R, E] when m/loc do not fit in shared memory, else null
};

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~size_t(15); }

// Shared-memory carve-up; identical on host (sizing) and device (pointers).
struct Smem {
  uint64_t *native, *extra;
  int64_t *T, *T0, *a, *b, *win, *in, *out, *tok, *tok0, *q;
  int64_t *red_g, *red_x, *red_kg;
  uint64_t *red_s, *red_ks;
  int32_t *m, *loc, *slots, *node, *p2l, *rep_e, *rep_src, *mv_e, *mv_from, *mv_to, *mv_amt, *moved, *emoves;
  int32_t* ctl;  // [0] status, [1] done, [2] e, [3] d, [4] nm, [5] blocked, [6] new replicas
  unsigned long long* total;
  int64_t* sel_x;
  size_t bytes;
};

template <class T>
__host__ __device__ inline T* take(unsigned char* base, size_t& off, size_t n) {
  off = align16(off);
  T* p = base ? reinterpret_cast<T*>(base + off) : nullptr;
  off += n * sizeof(T);
  return p;
}

__host__ __device__ inline Smem carve(unsigned char* base, int R, int E, int S, int K, int num_slots,
                                      bool m_in_smem) {
  Smem s{};
  size_t off = 0;
  s.native = take<uint64_t>(base, off, E);
  s.extra = take<uint64_t>(base, off, E);
  int64_t** r64[] = {&s.T, &s.T0, &s.a, &s.b, &s.win, &s.in, &s.out, &s.tok, &s.tok0, &s.q};
  for (int64_t** p : r64) *p = take<int64_t>(base, off, R);
  s.red_g = take<int64_t>(base, off, kWarps);
  s.red_x = take<int64_t>(base, off, kWarps);
  s.red_kg = take<int64_t>(base, off, kWarps);
  s.red_s = take<uint64_t>(base, off, kWarps);
  s.red_ks = take<uint64_t>(base, off, kWarps);
  s.total = take<unsigned long long>(base, off, 1);
  s.sel_x = take<int64_t>(base, off, 1);
  s.ctl = take<int32_t>(base, off, 8);
  s.slots = take<int32_t>(base, off, R);
  s.node = take<int32_t>(base, off, R);
  s.rep_e = take<int32_t>(base, off, static_cast<size_t>(R) * S + 1);
  s.rep_src = take<int32_t>(base, off, static_cast<size_t>(R) * S + 1);
  s.mv_e = take<int32_t>(base, off, K + 1);
  s.mv_from = take<int32_t>(base, off, K + 1);
  s.mv_to = take<int32_t>(base, off, K + 1);
  s.mv_amt = take<int32_t>(base, off, static_cast<size_t>(K + 1) * R);
  s.moved = take<int32_t>(base, off, K + 1);
  s.emoves = take<int32_t>(base, off, E);
  s.p2l = take<int32_t>(base, off, num_slots);
  if (m_in_smem) {
    s.m = take<int32_t>(base, off, static_cast<size_t>(R) * E);
    s.loc = take<int32_t>(base, off, static_cast<size_t>(R) * E);
  }
  s.bytes = align16(off);
  return s;
}

__device__ inline void warp_best(int64_t& g, uint64_t& s, int64_t& x) {
  for (int off = 16; off > 0; off >>= 1) {
    const int64_t g2 = __shfl_xor_sync(kFull, g, off);
    const uint64_t s2 = __shfl_xor_sync(kFull, s, off);
    const int64_t x2 = __shfl_xor_sync(kFull, x, off);
    if (pd::better(g2, s2, g, s)) {
      g = g2;
      s = s2;
      x = x2;
    }
  }
}

__device__ inline int64_t warp_sum(int64_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

__global__ void __launch_bounds__(kThreads) probe_plan_kernel(KernelArgs p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int R = p.R, E = p.E, S = p.S, K = p.K, rpn = p.rpn;
  const int layer = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  Smem sm = carve(smem, R, E, S, K, p.num_slots, p.gws == nullptr);
  if (p.gws != nullptr) {
    sm.m = p.gws + static_cast<size_t>(layer) * 2 * R * E;
    sm.loc = sm.m + static_cast<size_t>(R) * E;
  }
  const size_t RE = static_cast<size_t>(R) * E;
  const int32_t* counts = p.counts + layer * RE;
  int32_t* quota = p.quota ? p.quota + layer * RE * R : nullptr;

  // Zero the dense quota first: the stores drain while the block plans, and the barriers below
  // order them before the non-zero entries written at the end.
  if (quota != nullptr) {
    const size_t n = RE * R;
    if ((reinterpret_cast<uintptr_t>(quota) & 15) == 0) {
      int4* q4 = reinterpret_cast<int4*>(quota);
      for (size_t i = tid; i < n / 4; i += kThreads) q4[i] = make_int4(0, 0, 0, 0);
      for (size_t i = (n / 4) * 4 + tid; i < n; i += kThreads) quota[i] = 0;
    } else {
      for (size_t i = tid; i < n; i += kThreads) quota[i] = 0;
    }
  }

  if (tid == 0) {
    for (int i = 0; i < 8; ++i) sm.ctl[i] = 0;
    *sm.total = 0;
  }
  for (int e = tid; e < E; e += kThreads) {
    sm.native[e] = 0;
    sm.extra[e] = 0;
    sm.emoves[e] = 0;
  }
  for (size_t i = tid; i < RE; i += kThreads) {
    sm.m[i] = 0;
    sm.loc[i] = 0;
  }
  for (int i = tid; i < R * S; i += kThreads) sm.rep_e[i] = sm.rep_src[i] = -1;
  __syncthreads();

  int status = 0;
  for (int r = tid; r < R; r += kThreads) {
    sm.a[r] = pd::model_ps(p.fixed_us[r], core::kProbeMaxFixedUs);
    sm.b[r] = pd::model_ps(p.us_per_token[r], core::kProbeMaxUsPerToken);
    sm.win[r] = pd::window_ps(p.window_us[static_cast<size_t>(layer) * R + r], core::kProbeMaxWindowUs);
    if (sm.a[r] < 0 || sm.b[r] < 0) status |= core::kProbeBadModel;
    if (sm.win[r] < 0) status |= core::kProbeBadWindow;
    sm.in[r] = sm.out[r] = 0;
    sm.slots[r] = 0;
    sm.node[r] = r / rpn;
  }
  for (int s = tid; s < p.num_slots; s += kThreads) {
    const int e = p.phy2log[static_cast<size_t>(layer) * p.num_slots + s];
    sm.p2l[s] = e;
    if (e < 0 || e >= E) {
      status |= core::kProbeBadPlacement;
    } else {
      atomicOr(reinterpret_cast<unsigned long long*>(&sm.native[e]), 1ull << (s / p.spg));
    }
  }
  __syncthreads();

  // Locality-first initial assignment: one thread per expert walks the sources, so no atomics.
  uint64_t my_total = 0;
  for (int e = tid; e < E; e += kThreads) {
    const uint64_t h = sm.native[e];
    if (h == 0) {
      status |= core::kProbeBadPlacement;
      continue;
    }
    const bool single = pd::popcount64(h) == 1;
    const int only = pd::ctz64(h);
    int64_t single_sum = 0;
    for (int s = 0; s < R; ++s) {
      const int32_t n = counts[static_cast<size_t>(s) * E + e];
      if (n < 0) {
        status |= core::kProbeBadCounts;
        continue;
      }
      my_total += static_cast<uint64_t>(n);
      if ((h >> s) & 1) {
        sm.m[static_cast<size_t>(s) * E + e] += n;
        sm.loc[static_cast<size_t>(s) * E + e] = n;
      } else if (single) {
        single_sum += n;
      } else {
        int32_t* col = sm.m + e;
        pd::init_split(n, h, s, pd::node_mask(s, rpn), [col, E](int r, int64_t v) { col[static_cast<size_t>(r) * E] += static_cast<int32_t>(v); });
      }
    }
    if (single) sm.m[static_cast<size_t>(only) * E + e] += static_cast<int32_t>(single_sum);
  }
  if (my_total) atomicAdd(sm.total, static_cast<unsigned long long>(my_total));
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
    return;
  }

  // Per-rank time and tokens: one warp per rank.
  for (int r = warp; r < R; r += kWarps) {
    int64_t t = 0, n = 0;
    const int64_t a = sm.a[r], b = sm.b[r];
    for (int e = lane; e < E; e += 32) {
      const int64_t v = sm.m[static_cast<size_t>(r) * E + e];
      t += pd::cost(v, a, b);
      n += v;
    }
    t = warp_sum(t);
    n = warp_sum(n);
    if (lane == 0) {
      sm.T[r] = sm.T0[r] = t;
      sm.tok[r] = sm.tok0[r] = n;
    }
  }
  __syncthreads();

  const pd::View v{R, E, S, rpn, sm.native, sm.extra, sm.m, sm.loc, sm.T, sm.a, sm.b, sm.win, sm.in, sm.out,
                   sm.slots, sm.node, p.t_intra, p.t_inter, p.min_gain};
  // Candidate pairs: the experts bn holds (its static slots, then its replicas) x helpers. Only those
  // can have movable tokens on bn, so this is the same set of pairs as all E x R.
  const int spg = p.spg;
  const int pairs = (spg + S) * R;
  for (int k = 0; k < K; ++k) {
    int bn = 0;
    for (int r = 1; r < R; ++r)
      if (sm.T[r] > sm.T[bn]) bn = r;

    int64_t g = -1, x = 0, kg = -1, kx = 0;
    uint64_t s = ~0ull, ks = ~0ull;
    for (int i = tid; i < pairs; i += kThreads) {
      const int j = i / R, d = i - j * R;
      if (d == bn) continue;
      int e;
      if (j < spg) {
        e = sm.p2l[bn * spg + j];
      } else {
        if (j - spg >= sm.slots[bn]) continue;
        e = sm.rep_e[bn * S + (j - spg)];
      }
      int64_t pg = 0, px = 0;
      uint64_t psec = 0;
      const int res = pd::eval_pair(v, bn, e, d, &pg, &psec, &px);
      if (res == pd::kPairOk) {
        if (pd::better(pg, psec, g, s)) g = pg, s = psec, x = px;
      } else if (res == pd::kPairWindowBlocked) {
        if (pd::better(pg, psec, kg, ks)) kg = pg, ks = psec;
      }
    }
    warp_best(g, s, x);
    warp_best(kg, ks, kx);
    if (lane == 0) {
      sm.red_g[warp] = g;
      sm.red_s[warp] = s;
      sm.red_x[warp] = x;
      sm.red_kg[warp] = kg;
      sm.red_ks[warp] = ks;
    }
    __syncthreads();
    // Warp 0 decides and applies the move; the rest of the block waits at the next barrier.
    if (warp == 0) {
      g = lane < kWarps ? sm.red_g[lane] : -1;
      s = lane < kWarps ? sm.red_s[lane] : ~0ull;
      x = lane < kWarps ? sm.red_x[lane] : 0;
      kg = lane < kWarps ? sm.red_kg[lane] : -1;
      ks = lane < kWarps ? sm.red_ks[lane] : ~0ull;
      warp_best(g, s, x);
      warp_best(kg, ks, kx);
      // Every lane now holds the same best pair.
      if (lane == 0) {
        if (kg >= 0 && (g < 0 || pd::better(kg, ks, g, s))) ++sm.ctl[5];
        sm.ctl[1] = g < 0;
      }
      if (g >= 0) {
        const int e = static_cast<int>((s >> 8) & 0xffffffu), d = static_cast<int>(s & 0xffu);
        const int nm = sm.ctl[4];
        for (int r = lane; r < R; r += 32)
          sm.q[r] = pd::current_quota(counts[static_cast<size_t>(r) * E + e], sm.native[e], r, e, bn, R, rpn, nm,
                                      sm.mv_e, sm.mv_from, sm.mv_to, sm.mv_amt);
        __syncwarp();
        // The tokens leave bn in locality order (pd::take_tokens, serial on the CPU); here every
        // source sums the quota of the sources ahead of it, so the amounts come out in parallel.
        int32_t* amt = sm.mv_amt + static_cast<size_t>(nm) * R;
        for (int r = lane; r < R; r += 32) amt[r] = static_cast<int32_t>(pd::take_from(sm.q, bn, d, R, sm.node, x, r));
        __syncwarp();
        if (lane == 0) {
          sm.mv_e[nm] = e;
          sm.mv_from[nm] = bn;
          sm.mv_to[nm] = d;
          if (!(((sm.native[e] | sm.extra[e]) >> d) & 1)) {
            int64_t t = 0;
            const int src = pd::pick_source(v, e, d, true, &t);
            sm.rep_e[d * S + sm.slots[d]] = e;
            sm.rep_src[d * S + sm.slots[d]] = src;
            ++sm.slots[d];
            sm.extra[e] |= 1ull << d;
            sm.in[d] += t;
            sm.out[src] += t;
            ++sm.ctl[6];
          }
          const size_t bi = static_cast<size_t>(bn) * E + e, di = static_cast<size_t>(d) * E + e;
          sm.T[bn] -= pd::cost(sm.m[bi], sm.a[bn], sm.b[bn]);
          sm.T[d] -= pd::cost(sm.m[di], sm.a[d], sm.b[d]);
          sm.m[bi] -= static_cast<int32_t>(x);
          sm.m[di] += static_cast<int32_t>(x);
          sm.T[bn] += pd::cost(sm.m[bi], sm.a[bn], sm.b[bn]);
          sm.T[d] += pd::cost(sm.m[di], sm.a[d], sm.b[d]);
          sm.tok[bn] -= x;
          sm.tok[d] += x;
          sm.loc[di] += amt[d];
          ++sm.emoves[e];
          sm.ctl[4] = nm + 1;
        }
      }
    }
    __syncthreads();
    if (sm.ctl[1]) break;
  }

  // Outputs. Quota: the rows of experts that never moved keep their initial split, written as
  // scattered non-zeros over the zero fill (one thread per row); the rows of moved experts are
  // rebuilt from the move list with one thread per (moved expert, source, rank) entry, so their
  // scans of the move list spread over the whole block.
  const int nm = sm.ctl[4];
  if (quota != nullptr) {
    if (tid == 0) {  // distinct moved experts, in move order
      int n = 0;
      for (int k = 0; k < nm; ++k) {
        bool seen = false;
        for (int i = 0; i < n; ++i) seen = seen || sm.moved[i] == sm.mv_e[k];
        if (!seen) sm.moved[n++] = sm.mv_e[k];
      }
      sm.ctl[7] = n;
    }
    for (size_t row = tid; row < RE; row += kThreads) {
      const int src = static_cast<int>(row / E), e = static_cast<int>(row - static_cast<size_t>(src) * E);
      if (sm.emoves[e] != 0) continue;
      const int64_t n = counts[row];
      if (n == 0) continue;
      int32_t* out = quota + row * R;
      pd::init_split(n, sm.native[e], src, pd::node_mask(src, rpn), [out](int r, int64_t v) {
        if (v != 0) out[r] = static_cast<int32_t>(v);
      });
    }
    __syncthreads();
    const int RR = R * R, total = sm.ctl[7] * RR;
    for (int i = tid; i < total; i += kThreads) {
      const int j = i / RR, rest = i - j * RR, src = rest / R, r = rest - src * R;
      const int e = sm.moved[j];
      const size_t row = static_cast<size_t>(src) * E + e;
      const int64_t q = pd::current_quota(counts[row], sm.native[e], src, e, r, R, rpn, nm, sm.mv_e, sm.mv_from,
                                          sm.mv_to, sm.mv_amt);
      if (q != 0) quota[row * R + r] = static_cast<int32_t>(q);
    }
  }
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
  if (tid == 0) {
    int32_t* st = p.stats + static_cast<size_t>(layer) * kProbeNumStats;
    st[core::kProbeStatMoves] = nm;
    st[core::kProbeStatNewReplicas] = sm.ctl[6];
    st[core::kProbeStatWindowBlocked] = sm.ctl[5];
    st[core::kProbeStatStatus] = 0;
  }
}

int max_optin_smem() {
  int dev = 0, v = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&dev));
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return v;
}

// Shared-memory bytes with and without m/loc, and whether m/loc fit.
void plan_smem(const core::ProbeConfig& c, size_t* bytes, bool* m_in_smem) {
  const size_t with =
      carve(nullptr, c.num_ranks, c.num_experts, c.max_extra_slots, c.max_iters, c.num_slots, true).bytes;
  const size_t without =
      carve(nullptr, c.num_ranks, c.num_experts, c.max_extra_slots, c.max_iters, c.num_slots, false).bytes;
  const size_t limit = static_cast<size_t>(max_optin_smem());
  *m_in_smem = with <= limit;
  *bytes = *m_in_smem ? with : without;
  MOEBAL_CHECK_ARG(*bytes <= limit, "probe: per-layer state needs ", *bytes, " bytes of shared memory; the device allows ",
                   limit, " (reduce max_iters, max_extra_slots or num_experts)");
}

// The kernel's dynamic shared-memory limit is a per-device attribute: raise it once per device and
// size (monotonically), outside any graph capture the caller may start later.
void raise_smem_limit(int bytes) {
  if (bytes <= 48 * 1024) return;
  static std::mutex mu;
  static int configured[kMaxDevices] = {};
  int dev = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&dev));
  MOEBAL_CHECK(dev >= 0 && dev < kMaxDevices, "probe: device ordinal ", dev, " beyond ", kMaxDevices);
  std::lock_guard<std::mutex> lock(mu);
  if (bytes <= configured[dev]) return;
  MOEBAL_CHECK_CUDA(cudaFuncSetAttribute(probe_plan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  configured[dev] = bytes;
}

}  // namespace

size_t probe_plan_workspace_bytes(const core::ProbeConfig& cfg, int32_t num_layers) {
  cfg.validate();
  MOEBAL_CHECK_ARG(num_layers >= 0, "probe: num_layers must be >= 0, got ", num_layers);
  size_t bytes = 0;
  bool m_in_smem = true;
  plan_smem(cfg, &bytes, &m_in_smem);
  return m_in_smem ? 0 : static_cast<size_t>(num_layers) * 2 * sizeof(int32_t) * cfg.num_ranks * cfg.num_experts;
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
  bool m_in_smem = true;
  plan_smem(cfg, &smem_bytes, &m_in_smem);
  const size_t need = m_in_smem ? 0 : static_cast<size_t>(num_layers) * 2 * sizeof(int32_t) * cfg.num_ranks * cfg.num_experts;
  MOEBAL_CHECK_ARG(need == 0 || (workspace != nullptr && workspace_bytes >= need), "probe: workspace of ",
                   workspace_bytes, " bytes is too small; probe_plan_workspace_bytes() = ", need);

  raise_smem_limit(static_cast<int>(smem_bytes));
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
  a.quota = out.quota;
  a.replica_expert = out.replica_expert;
  a.replica_src = out.replica_src;
  a.rank_time_us = out.rank_time_us;
  a.rank_tokens = out.rank_tokens;
  a.stats = out.stats;
  a.gws = m_in_smem ? nullptr : static_cast<int32_t*>(workspace);
  probe_plan_kernel<<<num_layers, kThreads, smem_bytes, stream>>>(a);
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace moebal::cuda
