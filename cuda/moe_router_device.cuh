// The routing of one token by one warp, shared by router_topk (moe_router.cu) and the fused
// route_and_layout kernel (moe_route_layout.cu). Both kernels inline this one function, so they
// compute the same ids and bit-identical weights (the same fp32 operations in the same order).
// Internal to moebal_cuda: not installed, not part of the public API.
#pragma once

#include <cfloat>
#include <climits>

#include <cuda_bf16.h>

#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda::detail {

constexpr unsigned kRouterFullMask = 0xffffffffu;

/// Checks a router configuration; `who` prefixes the messages. Throws moebal::ValueError.
void check_router_params(const char* who, LogitsDtype dtype, int64_t num_tokens, const RouterParams& p);

__device__ __forceinline__ float load_logit(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_logit(const __nv_bfloat16* p) { return __bfloat162float(*p); }

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
/// when num_groups > 1). On return lane j < top_k holds the j-th expert id and its final weight
/// (renormalised and scaled); other lanes hold unspecified values.
///
/// Lane l holds experts l, l + 32, ..., so loads are coalesced and every value lives in registers
/// (kPerLane of them, indexed only with compile-time constants). A round of the top-k is: each
/// lane's cached best, a warp max of the ordered keys and a warp min of the ids that reach it
/// (two redux.sync instructions), and a rescan in the winning lane alone.
template <int kPerLane, bool kBias, class T>
__device__ __forceinline__ void route_token_warp(const T* __restrict__ row, const RouterParams& p,
                                                 const float* __restrict__ bias, float* stage, int& out_id,
                                                 float& out_w) {
  const int lane = threadIdx.x & 31;
  const int E = p.num_experts;

  // 1. Logits -> scores s (kept only with a bias) and choice values c. Every global load (logits
  // and bias) is issued here, up front, so their latencies overlap.
  float c[kPerLane];
  float s[kBias ? kPerLane : 1];
  float bv[kBias ? kPerLane : 1];
  unsigned long long alive = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    c[i] = e < E ? nan_to_neg_inf(load_logit(row + e)) : -INFINITY;
    if constexpr (kBias) bv[i] = e < E ? __ldg(bias + e) : 0.0f;
    if (e < E) alive |= 1ull << i;
  }
  const bool softmax = p.scoring == RouterScoring::kSoftmax;
  if (softmax) {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) mx = fmaxf(mx, c[i]);
    mx = warp_max(mx);
    if (mx == -INFINITY) mx = 0.0f;  // all -inf: every score is 0
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      c[i] = expf(c[i] - mx);  // 0 for the padding lanes (-inf)
      sum += c[i];
    }
    sum = warp_sum(sum);
    const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) c[i] *= inv_sum;
  } else {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) c[i] = 1.0f / (1.0f + expf(-c[i]));
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
  //  - Groups of a multiple of 32 experts (DeepSeek-V3: 256 / 8 = 32), up to 256 experts: group g
  //    is registers [g * m, (g + 1) * m) of every lane (m = group_size / 32), so each register's
  //    top two are reduced across the warp by a butterfly (every lane ends with every group's
  //    score) and the groups are chosen in registers, with no shared memory and no serial loop.
  //  - Otherwise: stage c in shared memory and let one lane per group score its group.
  // Both compute each score from the same two values, so they agree bit for bit.
  const int group_size = p.num_groups > 1 ? E / p.num_groups : E;
  if (kPerLane <= 8 && p.num_groups > 1 && group_size % 32 == 0) {
    const int m = group_size / 32;
    float top1[kPerLane], top2[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      top1[i] = c[i];
      top2[i] = -INFINITY;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const float oa = __shfl_xor_sync(kRouterFullMask, top1[i], off);
        const float ob = __shfl_xor_sync(kRouterFullMask, top2[i], off);
        top2[i] = fmaxf(fminf(top1[i], oa), fmaxf(top2[i], ob));
        top1[i] = fmaxf(top1[i], oa);
      }
    }
    // Merge the registers of a group into its first register (m is 1, 2, 4 or 8 here).
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
#pragma unroll
      for (int j = i + 1; j < kPerLane; ++j) {
        if (i % m == 0 && j / m == i / m) {
          top2[i] = fmaxf(fminf(top1[i], top1[j]), fmaxf(top2[i], top2[j]));
          top1[i] = fmaxf(top1[i], top1[j]);
        }
      }
    }
    float gscore[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) gscore[i] = kBias ? top1[i] + top2[i] : top1[i];
    unsigned eligible = 0;  // bit g: group g stays
    for (int r = 0; r < p.topk_groups; ++r) {
      float bvv = -INFINITY;
      int bg = -1;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int g = i / m;
        if (i % m == 0 && g < p.num_groups && !((eligible >> g) & 1u) && (bg < 0 || beats(gscore[i], g, bvv, bg))) {
          bvv = gscore[i];
          bg = g;
        }
      }
      eligible |= 1u << bg;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (!((eligible >> (i / m)) & 1u)) alive &= ~(1ull << i);
  } else if (p.num_groups > 1) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < E) stage[lane + 32 * i] = c[i];
    __syncwarp();
    float gscore = -INFINITY;
    if (lane < p.num_groups) {
      const float* g = stage + lane * group_size;
      if (kBias) {  // sum of the two largest (DeepSeek-V3)
        float a = -INFINITY, b = -INFINITY;
#pragma unroll 8
        for (int i = 0; i < group_size; ++i) {
          const float v = g[i];
          if (v > a) {
            b = a;
            a = v;
          } else if (v > b) {
            b = v;
          }
        }
        gscore = group_size > 1 ? a + b : a;
      } else {
#pragma unroll 8
        for (int i = 0; i < group_size; ++i) gscore = fmaxf(gscore, g[i]);
      }
    }
    unsigned eligible = 0;
    for (int r = 0; r < p.topk_groups; ++r) {
      const bool open = lane < p.num_groups && !((eligible >> lane) & 1u);
      float v = open ? gscore : -INFINITY;
      int id = open ? lane : INT_MAX;
      warp_argmax(v, id);
      eligible |= 1u << id;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < E && !((eligible >> (e / group_size)) & 1u)) alive &= ~(1ull << i);
    }
  }

  // 3. top_k rounds.
  float best_v = -INFINITY;
  int best_i = -1;
  auto rescan = [&] {
    best_v = -INFINITY;
    best_i = -1;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (((alive >> i) & 1ull) && (best_i < 0 || c[i] > best_v)) {
        best_v = c[i];
        best_i = i;
      }
  };
  rescan();
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  for (int r = 0; r < p.top_k; ++r) {
    const unsigned key = best_i >= 0 ? ordered_key(best_v) : 0u;
    const unsigned top = __reduce_max_sync(kRouterFullMask, key);
    const unsigned cand =
        (best_i >= 0 && key == top) ? static_cast<unsigned>(lane + 32 * best_i) : 0xffffffffu;
    const unsigned id = __reduce_min_sync(kRouterFullMask, cand);
    const bool won = static_cast<unsigned>(lane) == (id & 31u);
    float w = 0.0f;
    if (won) {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
        if (i == best_i) {
          if constexpr (kBias) {
            w = s[i];
          } else {
            w = c[i];
          }
        }
      alive &= ~(1ull << best_i);
      rescan();
    }
    w = __shfl_sync(kRouterFullMask, w, static_cast<int>(id & 31u));
    wsum += w;  // in round order j = 0, 1, ..., as the CPU reference sums
    if (lane == r) {
      my_id = static_cast<int>(id);
      my_w = w;
    }
  }

  // 4. Weights.
  if (p.renormalize && wsum > 0.0f) my_w /= wsum;
  out_id = my_id;
  out_w = my_w * p.scaling_factor;
}

}  // namespace moebal::cuda::detail
