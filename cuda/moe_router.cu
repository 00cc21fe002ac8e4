// Router top-k: one warp per token, the token's scores in registers; optional group-limited
// routing; top_k rounds of a warp arg-max whose order (larger value, then lower id) makes the
// selection deterministic. The per-token routine lives in moe_router_device.cuh (shared with the
// fused route_and_layout kernel).
#include <climits>

#include "moe_router_device.cuh"
#include "moebal/cuda/check.h"
#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

template <int kPerLane, bool kBias, class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    router_topk_kernel(const T* __restrict__ logits, int64_t num_tokens, RouterParams p,
                       const float* __restrict__ bias, int32_t* __restrict__ topk_ids,
                       float* __restrict__ topk_weights) {
  extern __shared__ float smem[];  // [warps][E] staging for group scores (num_groups > 1 only)
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (t >= num_tokens) return;  // whole warps exit together
  int id;
  float w;
  detail::route_token_warp<kPerLane, kBias>(logits + t * p.num_experts, p, bias, smem + warp * p.num_experts, id,
                                            w);
  if (lane < p.top_k) {
    topk_ids[t * p.top_k + lane] = id;
    topk_weights[t * p.top_k + lane] = w;
  }
}

template <int kPerLane, class T>
void launch_router(const T* logits, int64_t num_tokens, const RouterParams& p, const float* bias,
                   int32_t* ids, float* weights, cudaStream_t stream) {
  const int64_t blocks = (num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const size_t smem = p.num_groups > 1 ? sizeof(float) * kWarpsPerBlock * p.num_experts : 0;
  if (bias != nullptr) {
    router_topk_kernel<kPerLane, true, T><<<static_cast<int>(blocks), kWarpsPerBlock * 32, smem, stream>>>(
        logits, num_tokens, p, bias, ids, weights);
  } else {
    router_topk_kernel<kPerLane, false, T><<<static_cast<int>(blocks), kWarpsPerBlock * 32, smem, stream>>>(
        logits, num_tokens, p, bias, ids, weights);
  }
}

template <class T>
void dispatch_router(const T* logits, int64_t num_tokens, const RouterParams& p, const float* bias,
                     int32_t* ids, float* weights, cudaStream_t stream) {
  const int per_lane = (p.num_experts + 31) / 32;
  if (per_lane <= 1) return launch_router<1>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 2) return launch_router<2>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 4) return launch_router<4>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 8) return launch_router<8>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 16) return launch_router<16>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 32) return launch_router<32>(logits, num_tokens, p, bias, ids, weights, stream);
  return launch_router<64>(logits, num_tokens, p, bias, ids, weights, stream);
}

}  // namespace

namespace detail {

void check_router_params(const char* who, LogitsDtype dtype, int64_t num_tokens, const RouterParams& p) {
  MOEBAL_CHECK_ARG(num_tokens >= 0, who, ": num_tokens must be >= 0, got ", num_tokens);
  MOEBAL_CHECK_ARG(p.num_experts >= 1 && p.num_experts <= kRouterMaxExperts,
                   who, ": num_experts must be in [1, ", kRouterMaxExperts, "], got ", p.num_experts);
  MOEBAL_CHECK_ARG(p.top_k >= 1 && p.top_k <= p.num_experts && p.top_k <= kRouterMaxTopK,
                   who, ": top_k must be in [1, min(num_experts, ", kRouterMaxTopK, ")], got ",
                   p.top_k);
  MOEBAL_CHECK_ARG(p.scoring == RouterScoring::kSoftmax || p.scoring == RouterScoring::kSigmoid,
                   who, ": unknown scoring ", static_cast<int>(p.scoring));
  MOEBAL_CHECK_ARG(dtype == LogitsDtype::kFloat32 || dtype == LogitsDtype::kBFloat16,
                   who, ": unknown logits dtype ", static_cast<int>(dtype));
  MOEBAL_CHECK_ARG(p.num_groups >= 1 && p.num_groups <= 32 && p.num_experts % p.num_groups == 0,
                   who, ": num_groups must be in [1, 32] and divide num_experts (",
                   p.num_experts, "), got ", p.num_groups);
  if (p.num_groups > 1) {
    MOEBAL_CHECK_ARG(p.topk_groups >= 1 && p.topk_groups <= p.num_groups,
                     who, ": topk_groups must be in [1, num_groups=", p.num_groups, "], got ",
                     p.topk_groups);
    MOEBAL_CHECK_ARG(static_cast<int64_t>(p.topk_groups) * (p.num_experts / p.num_groups) >= p.top_k,
                     who, ": topk_groups * group size (", p.topk_groups, " * ",
                     p.num_experts / p.num_groups, ") must be >= top_k (", p.top_k, ")");
  }
}

}  // namespace detail

void router_topk(const void* logits, LogitsDtype dtype, int64_t num_tokens, const RouterParams& p,
                 const float* correction_bias, int32_t* topk_ids, float* topk_weights,
                 cudaStream_t stream) {
  detail::check_router_params("router_topk", dtype, num_tokens, p);
  if (num_tokens == 0) return;
  MOEBAL_CHECK_ARG(logits != nullptr && topk_ids != nullptr && topk_weights != nullptr,
                   "router_topk: null device pointer");
  MOEBAL_CHECK_ARG((num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock <= INT_MAX,
                   "router_topk: too many tokens: ", num_tokens);
  if (dtype == LogitsDtype::kFloat32) {
    dispatch_router(static_cast<const float*>(logits), num_tokens, p, correction_bias, topk_ids, topk_weights,
                    stream);
  } else {
    dispatch_router(static_cast<const __nv_bfloat16*>(logits), num_tokens, p, correction_bias, topk_ids,
                    topk_weights, stream);
  }
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace moebal::cuda
