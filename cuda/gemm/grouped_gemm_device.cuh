// Device helpers shared by the decode grouped-GEMM kernels (grouped_gemm_skinny.cu,
// grouped_gemm_gemv.cu): active-group lookup from the device offsets, streaming weight loads, SiLU
// (also the portable kernel's SwiGLU epilogue in grouped_gemm.cu).
// Not installed.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moebal::cuda::detail {

__device__ __forceinline__ int clamp_row(int32_t v, int total) { return min(max(v, 0), total); }

// Finds the a-th (0-based) non-empty group; returns -1 when there are fewer. num_active gets the
// number of non-empty groups. Same clamping as the other kernels: lo = clamp(offsets[g], 0, total),
// hi = clamp(offsets[g + 1], lo, total). Called by a whole warp; result uniform across it.
__device__ inline int locate_group(const int32_t* __restrict__ offsets, int num_groups, int total, int a, int& num_active,
                                   int& lo, int& hi) {
  const int lane = threadIdx.x & 31;
  const int per = (num_groups + 31) / 32;
  const int g_begin = min(lane * per, num_groups), g_end = min(g_begin + per, num_groups);
  int count = 0;
  {
    int prev = clamp_row(__ldg(offsets + g_begin), total);
#pragma unroll 4
    for (int g = g_begin; g < g_end; ++g) {
      const int next = clamp_row(__ldg(offsets + g + 1), total);
      count += max(next, prev) > prev;
      prev = next;
    }
  }
  int incl = count;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += v;
  }
  num_active = __shfl_sync(0xffffffffu, incl, 31);
  if (a >= num_active) return -1;
  const int excl = incl - count;
  const unsigned owner_mask = __ballot_sync(0xffffffffu, excl <= a && a < incl);
  const int owner = __ffs(owner_mask) - 1;
  int found = -1, flo = 0, fhi = 0;
  if (lane == owner) {
    int seen = excl;
    int prev = clamp_row(__ldg(offsets + g_begin), total);
    for (int g = g_begin; g < g_end; ++g) {
      const int next = clamp_row(__ldg(offsets + g + 1), total);
      const int h = max(next, prev);
      if (h > prev) {
        if (seen == a) {
          found = g;
          flo = prev;
          fhi = h;
          break;
        }
        ++seen;
      }
      prev = next;
    }
  }
  found = __shfl_sync(0xffffffffu, found, owner);
  lo = __shfl_sync(0xffffffffu, flo, owner);
  hi = __shfl_sync(0xffffffffu, fhi, owner);
  return found;
}

// 16 bytes of weights, read-only, not kept in L1 (each byte is used by one warp only). With
// kL2Prefetch the load carries the L2 256-byte prefetch-size hint (one 256-byte DRAM request per
// row segment; the skinny kernel's lane quads read 64 bytes of a row per load).
template <bool kL2Prefetch>
__device__ __forceinline__ uint4 load_weights(const __nv_bfloat16* p) {
  uint4 v;
  if constexpr (kL2Prefetch) {
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
  } else {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
  }
  return v;
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + __expf(-v)); }

}  // namespace moebal::cuda::detail
