// The routing of one token by one warp, shared by router_topk (moe_router.cu) and the fused
// route_and_layout kernel (moe_route_layout.cu). Both kernels inline this one function, so they
// compute the same ids and bit-identical weights (the same fp32 operations in the same order).
// Internal to moebal_cuda: not installed, not part of the public API.
#pragma once

#include <cfloat>
#include <climits>
#include <cstdint>

#include <cuda_bf16.h>

#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda::detail {

constexpr unsigned kRouterFullMask = 0xffffffffu;

/// Checks a router configuration; `who` prefixes the messages. Throws moebal::ValueError.
void check_router_params(const char* who, LogitsDtype dtype, int64_t num_tokens, const RouterParams& p);

__device__ __forceinline__ float load_logit(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_logit(const __nv_bfloat16* p) { return __bfloat162float(*p); }

/// v[i] = row[first + i] for i < kPerLane (`pad` past n), as floats. One or two 16-byte loads
/// when the chunk is whole and 16-byte aligned (the common case: rows of 128 or 256 experts).
template <int kPerLane, class T>
__device__ __forceinline__ void load_chunk(const T* __restrict__ row, int n, int first, float pad,
                                           float (&v)[kPerLane]) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte load
  if constexpr (kPerLane % kVec == 0) {
    if (first + kPerLane <= n && (reinterpret_cast<uintptr_t>(row + first) & 15u) == 0) {
      const uint4* q = reinterpret_cast<const uint4*>(row + first);
#pragma unroll
      for (int j = 0; j < kPerLane / kVec; ++j) {
        const uint4 x = __ldg(q + j);
        const unsigned u[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          if constexpr (sizeof(T) == 4) {
            v[j * 4 + h] = __uint_as_float(u[h]);
          } else {  // bf16 -> fp32 is exact: the 16 bits become the high half
            v[j * 8 + 2 * h] = __uint_as_float(u[h] << 16);
            v[j * 8 + 2 * h + 1] = __uint_as_float(u[h] & 0xffff0000u);
          }
        }
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) v[i] = first + i < n ? load_logit(row + first + i) : pad;
}

/// 1.0f / d, bit for bit, for d whose exponent passes rcp_fast_ok (all normal d in [2^-125,
/// 2^125] among others): the correctly rounded reciprocal's fast path (an approximate reciprocal
/// and one Newton step with fused multiply-adds), without the per-call branch to the slow path
/// that keeps the compiler from overlapping several divisions. cuda_test_moe_dataplane.cu checks
/// it against the division for every float in [1, 2^125].
__device__ __forceinline__ bool rcp_fast_ok(float d) {
  return ((__float_as_uint(d) + 0x01800000u) & 0x7f800000u) > 0x01ffffffu;
}
__device__ __forceinline__ float rcp_fast(float d) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  const float e = fmaf(d, r, -1.0f);
  return fmaf(r, -e, r);
}

__device__ __forceinline__ float nan_to_neg_inf(float v) { return isnan(v) ? -INFINITY : v; }

// (v, id) beats (bv, bid) when larger, or equal and with a lower id.
__device__ __forceinline__ bool beats(float v, int id, float bv, int bid) {
  return v > bv || (v == bv && id < bid);
}

__device__ __forceinline__ void warp_argmax(float& v, int& id) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kRouterFullMask, v, off);
    const int oid = __shfl_xor_sync(kRouterFullMask, id, off);
    if (beats(ov, oid, v, id)) {
      v = ov;
      id = oid;
    }
  }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kRouterFullMask, v, off));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kRouterFullMask, v, off);
  return v;
}

// Order-preserving map of a float to an unsigned key (larger float -> larger key); -0 and +0
// are made equal first so that they tie as they do in float comparison.
__device__ __forceinline__ unsigned ordered_key(float v) {
  const unsigned u = __float_as_uint(v + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/// Routes one token; called by all 32 lanes of a warp together. `row` points at the token's
/// logits [num_experts]; `stage` is this warp's shared scratch of num_experts floats (read only
/// when num_groups > 1 and a group is not a whole number of lanes, see step 2). On return lane
/// j < top_k holds the j-th expert id and its final weight (renormalised and scaled); other lanes
/// hold unspecified values.
///
/// Lane l holds experts kPerLane * l + i (i < kPerLane): a contiguous chunk, loaded with 16-byte
/// loads, kept in registers indexed only with compile-time constants. One warp routes one token,
/// so the routine is latency bound; it is written to keep its dependent chains short: no run-time
/// integer division, no branch around each reciprocal, a group of DeepSeek-V3 (32 experts) is
/// 4 lanes (2 shuffle steps for its top two), the group choice is a rank count, and each lane
/// sorts its values once so that a top-k round is one redux.sync, one vote and a register shift.
template <int kPerLane, bool kBias, class T>
__device__ __forceinline__ void route_token_warp(const T* __restrict__ row, const RouterParams& p,
                                                 const float* __restrict__ bias, float* stage, int& out_id,
                                                 float& out_w) {
  const int lane = threadIdx.x & 31;
  const int E = p.num_experts;
  const int first = kPerLane * lane;  // this lane's first expert

  // 1. Logits -> scores s (kept only with a bias) and choice values c. Every global load (logits
  // and bias) is issued here, up front, so their latencies overlap.
  float c[kPerLane];
  float s[kBias ? kPerLane : 1];
  float bv[kBias ? kPerLane : 1];
  load_chunk<kPerLane>(row, E, first, -INFINITY, c);
  if constexpr (kBias) load_chunk<kPerLane>(bias, E, first, 0.0f, bv);
  unsigned long long alive = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    c[i] = nan_to_neg_inf(c[i]);
    if (first + i < E) alive |= 1ull << i;
  }
  if (p.scoring == RouterScoring::kSoftmax) {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) mx = fmaxf(mx, c[i]);
    mx = warp_max(mx);
    if (mx == -INFINITY) mx = 0.0f;  // all -inf: every score is 0
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      c[i] = expf(c[i] - mx);  // 0 for the padding (-inf)
      sum += c[i];
    }
    sum = warp_sum(sum);
    const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) c[i] *= inv_sum;
  } else {  // 1 / (1 + e^-x)
    bool fast = true;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      c[i] = 1.0f + expf(-c[i]);
      fast = fast && rcp_fast_ok(c[i]);
    }
    if (fast) {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) c[i] = rcp_fast(c[i]);
    } else {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) c[i] = 1.0f / c[i];
    }
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    if constexpr (kBias) {
      s[i] = c[i];
      c[i] = nan_to_neg_inf(c[i] + bv[i]);
    } else {
      c[i] = nan_to_neg_inf(c[i]);
    }
  }

  // 2. Group-limited routing: the best topk_groups groups stay alive. A group's score is the sum
  // of its two largest choice values with a bias, else its largest.
  //  - A group of a power-of-two number L of whole lanes (DeepSeek-V3: 32 experts = 4 lanes of
  //    8): each lane takes the top two of its own values, L-lane butterflies merge them, and a
  //    lane's group stays when fewer than topk_groups groups beat it (higher score, or equal and a
  //    lower id: a strict total order, so this is the reference's sequential arg-max selection).
  //  - Otherwise: stage c in shared memory and let one lane per group score its group.
  // Both compute each score from the same two values, so they agree bit for bit. A score inf +
  // -inf (infinite biases) counts as -inf.
  if (p.num_groups > 1) {
    const int group_size = E / p.num_groups;
    const int lanes = group_size / kPerLane;  // lanes per group when whole
    if (group_size % kPerLane == 0 && (lanes & (lanes - 1)) == 0) {
      float a = -INFINITY, b = -INFINITY;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        b = fmaxf(b, fminf(a, c[i]));
        a = fmaxf(a, c[i]);
      }
      for (int off = 1; off < lanes; off <<= 1) {
        const float oa = __shfl_xor_sync(kRouterFullMask, a, off);
        const float ob = __shfl_xor_sync(kRouterFullMask, b, off);
        b = fmaxf(fminf(a, oa), fmaxf(b, ob));
        a = fmaxf(a, oa);
      }
      const unsigned gkey = ordered_key(nan_to_neg_inf(kBias && group_size > 1 ? a + b : a));
      const int lanes_log2 = __ffs(lanes) - 1;
      const int g = lane >> lanes_log2;
      int beaten_by = 0;
#pragma unroll 8
      for (int h = 0; h < p.num_groups; ++h) {
        const unsigned hkey = __shfl_sync(kRouterFullMask, gkey, h << lanes_log2);
        beaten_by += (hkey > gkey || (hkey == gkey && h < g)) ? 1 : 0;
      }
      if (g >= p.num_groups || beaten_by >= p.topk_groups) alive = 0;
    } else {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
        if (first + i < E) stage[first + i] = c[i];
      __syncwarp();
      float gscore = -INFINITY;
      if (lane < p.num_groups) {
        const float* gp = stage + lane * group_size;
        if (kBias) {  // sum of the two largest (DeepSeek-V3)
          float a = -INFINITY, b = -INFINITY;
#pragma unroll 8
          for (int i = 0; i < group_size; ++i) {
            b = fmaxf(b, fminf(a, gp[i]));
            a = fmaxf(a, gp[i]);
          }
          gscore = nan_to_neg_inf(group_size > 1 ? a + b : a);
        } else {
#pragma unroll 8
          for (int i = 0; i < group_size; ++i) gscore = fmaxf(gscore, gp[i]);
        }
      }
      __syncwarp();  // stage is free again
      unsigned eligible = 0;
      for (int r = 0; r < p.topk_groups; ++r) {
        const bool open = lane < p.num_groups && !((eligible >> lane) & 1u);
        float v = open ? gscore : -INFINITY;
        int id = open ? lane : INT_MAX;
        warp_argmax(v, id);
        eligible |= 1u << id;
      }
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
        if (first + i < E && !((eligible >> ((first + i) / group_size)) & 1u)) alive &= ~(1ull << i);
    }
  }

  // 3. top_k rounds. A round: the warp max of the lanes' best alive keys (one redux.sync), the
  // lowest lane holding it wins (one vote; with contiguous chunks the lowest lane holds the lowest
  // id among equal values), and the winner drops that value. Up to 8 values a lane, each lane
  // sorts its values once (a bitonic network in registers: larger first, lower id first among
  // equals), so the winner's next best is a register shift; with more values a lane the winner
  // rescans. A round's expert id and weight reach the other lanes by shuffles whose results are
  // consumed one round later, off the round's critical path.
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  int pend_r = -1, pend_id = 0;
  float pend_w = 0.0f;
  auto consume = [&] {  // the previous round's result, in round order (as the reference sums)
    if (pend_r >= 0) {
      wsum += pend_w;
      if (lane == pend_r) {
        my_id = pend_id;
        my_w = pend_w;
      }
    }
  };
  if constexpr (kPerLane <= 8) {
    unsigned key[kPerLane];  // 0: not alive (every alive value has a key above 0)
    int idx[kPerLane];
    float wv[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      key[i] = ((alive >> i) & 1ull) ? ordered_key(c[i]) : 0u;
      idx[i] = i;
      if constexpr (kBias) {
        wv[i] = s[i];
      } else {
        wv[i] = c[i];
      }
    }
#pragma unroll
    for (int k = 2; k <= kPerLane; k <<= 1) {
#pragma unroll
      for (int j = k >> 1; j > 0; j >>= 1) {
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int l = i ^ j;
          if (l > i) {
            // l goes first in a descending run ((i & k) == 0), i in an ascending one.
            const bool l_first = key[l] > key[i] || (key[l] == key[i] && idx[l] < idx[i]);
            const bool sw = ((i & k) == 0) == l_first;
            const unsigned ki = key[i], kl = key[l];
            const int ii = idx[i], il = idx[l];
            const float wi = wv[i], wl = wv[l];
            key[i] = sw ? kl : ki;
            key[l] = sw ? ki : kl;
            idx[i] = sw ? il : ii;
            idx[l] = sw ? ii : il;
            wv[i] = sw ? wl : wi;
            wv[l] = sw ? wi : wl;
          }
        }
      }
    }
    for (int r = 0; r < p.top_k; ++r) {
      const unsigned top = __reduce_max_sync(kRouterFullMask, key[0]);
      consume();
      const unsigned holders = __ballot_sync(kRouterFullMask, key[0] == top);
      const int winner = __ffs(holders) - 1;
      pend_id = __shfl_sync(kRouterFullMask, first + idx[0], winner);
      pend_w = __shfl_sync(kRouterFullMask, wv[0], winner);
      pend_r = r;
      const bool won = lane == winner;
#pragma unroll
      for (int i = 0; i + 1 < kPerLane; ++i) {
        key[i] = won ? key[i + 1] : key[i];
        idx[i] = won ? idx[i + 1] : idx[i];
        wv[i] = won ? wv[i + 1] : wv[i];
      }
      key[kPerLane - 1] = won ? 0u : key[kPerLane - 1];
    }
  } else {
    unsigned best_key = 0;  // 0: none alive
    int best_i = 0;
    auto rescan = [&] {
      best_key = 0;
      best_i = 0;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const unsigned k = ((alive >> i) & 1ull) ? ordered_key(c[i]) : 0u;
        if (k > best_key) {  // strict: the lower id keeps a tie
          best_key = k;
          best_i = i;
        }
      }
    };
    rescan();
    for (int r = 0; r < p.top_k; ++r) {
      const unsigned top = __reduce_max_sync(kRouterFullMask, best_key);
      consume();
      const int winner = __ffs(__ballot_sync(kRouterFullMask, best_key == top)) - 1;
      float w = 0.0f;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
        if (i == best_i) {
          if constexpr (kBias) {
            w = s[i];
          } else {
            w = c[i];
          }
        }
      pend_id = __shfl_sync(kRouterFullMask, first + best_i, winner);
      pend_w = __shfl_sync(kRouterFullMask, w, winner);
      pend_r = r;
      if (lane == winner) {
        alive &= ~(1ull << best_i);
        rescan();
      }
    }
  }
  consume();

  // 4. Weights.
  if (p.renormalize && wsum > 0.0f) my_w /= wsum;
  out_id = my_id;
  out_w = my_w * p.scaling_factor;
}

}  // namespace moebal::cuda::detail
