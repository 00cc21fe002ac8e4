// Decode ("skinny") grouped GEMM and the fused gate/up + SiLU(gate) * up GEMM, portable sm_80+.
//
// At decode a group holds a handful of rows, so the work is a stream of expert weights past a few
// token vectors: the kernel must keep enough weight bytes in flight to saturate HBM and do little
// else. Computed as y^T = W x^T with mma.sync m16n8k16 (bf16 in, fp32 accumulate): the 16 "M" rows
// of an MMA are 16 weight rows (output features), its 8 "N" columns are 8 tokens of the group.
//
// Weights go straight from global memory into the A fragments (no shared memory, no ldmatrix).
// PTX fragment layout of m16n8k16 (.bf16): with g = lane / 4, c = lane % 4, lane holds
//   A: a0a1 = (row g,   k 2c..2c+1), a2a3 = (row g+8, k 2c..2c+1),
//      a4a5 = (row g,   k 2c+8..2c+9), a6a7 = (row g+8, k 2c+8..2c+9);
//   B: b0b1 = (k 2c..2c+1, col g), b2b3 = (k 2c+8..2c+9, col g);
//   C: c0c1 = (row g, cols 2c..2c+1), c2c3 = (row g+8, cols 2c..2c+1).
// A dot product does not change when the same permutation of k is applied to both operands, so
// the logical k of MMA step s in {0, 1} of a 32-wide chunk at k0 is mapped to physical k as
//   {2c, 2c+1, 2c+8, 2c+9} -> k0 + 8c + 4s + {0, 1, 2, 3}.
// Then lane (g, c) needs 8 contiguous bf16 (one 16-byte load) of weight rows g and g+8 at
// k0 + 8c, and the same 16 bytes of token g's x row: values 0-3 feed step 0, values 4-7 step 1.
// One warp-wide load instruction covers 64 contiguous bytes of each of 8 rows (whole sectors).
//
// Work split: a CTA of 4 warps owns 4 / KS weight tiles of one active group; the KS warps of a tile
// split k and reduce through shared memory. Tokens are processed in passes of NT token tiles of 8
// (NT = 1, 2 or 4, the smallest that holds total_rows, so decode keeps few registers) held in
// registers; a group with more rows streams its weights once per pass, so the kernel is meant for
// few rows per group (the front end picks it only there). grid.y enumerates
// ACTIVE groups: each warp scans the device offsets (one coalesced read of num_groups + 1 ints) to
// find the blockIdx.y-th non-empty group, so empty experts cost no CTAs and the host needs no
// per-group sizes.
//
// Fused variant (w13 = [W1 gate; W3 up], [groups, 2F, H]): a warp's 16 MMA rows are gate rows
// j..j+7 and up rows F+j..F+j+7, so c0/c2 (and c1/c3) of a lane are gate and up of the same
// (feature j+g, token): the epilogue writes silu(gate) * up in fp32 and rounds once to bf16.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "grouped_gemm_device.cuh"
#include "grouped_gemm_internal.h"
#include "moebal/core/error.h"
#include "moebal/cuda/check.h"

namespace moebal::cuda::detail {
namespace {

constexpr int kSkinnyWarps = 4;       // warps per CTA
constexpr int kSkinnyUnroll = 4;      // 32-wide k chunks loaded per batch: 8 x 16 B of W per lane
constexpr int kSkinnyTokenTiles = 4;  // 8-token tiles per pass (32 tokens in registers)

struct SkinnyParams {
  const __nv_bfloat16* x;  // [total_rows, k]
  const __nv_bfloat16* w;  // [num_groups, n, k]; fused: n = 2 * ffn
  __nv_bfloat16* y;        // [total_rows, n]; fused: [total_rows, ffn]
  const int32_t* offsets;  // [num_groups + 1], device
  int num_groups;
  int total_rows;
  int n, k;
  int num_tiles;  // weight tiles per group: ceil(n / 16), fused ffn / 8
  int ffn;        // fused only
};

__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Shared memory of the split-k reduction: [warp][token tile][fragment value][lane].
struct SkinnyShared {
  float red[kSkinnyWarps][kSkinnyTokenTiles][4][32];
};

// One pass of NT token tiles (tokens tok0 .. tok0 + 8 NT - 1 of the group) for the warp's tile.
template <bool kFused, bool kL2Prefetch, int KS, int NT>
__device__ __forceinline__ void skinny_pass(const SkinnyParams& p, SkinnyShared& sm, int lo, int rows, int tok0,
                                            const __nv_bfloat16* w_g, int tile, int ks_idx) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int g = lane >> 2, c = lane & 3;
  const bool tile_ok = tile < p.num_tiles;  // warp-uniform
  // Weight rows of this lane: plain 16-row tile, or 8 gate rows over the matching 8 up rows.
  const int row_a = kFused ? tile * 8 + g : tile * 16 + g;
  const int row_b = kFused ? p.ffn + tile * 8 + g : tile * 16 + g + 8;
  const bool ok_a = tile_ok && row_a < p.n, ok_b = tile_ok && row_b < p.n;
  const __nv_bfloat16* wa = w_g + static_cast<int64_t>(ok_a ? row_a : 0) * p.k + 8 * c;
  const __nv_bfloat16* wb = w_g + static_cast<int64_t>(ok_b ? row_b : 0) * p.k + 8 * c;
  const __nv_bfloat16* xr[NT];
  bool ok_x[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int tok = tok0 + 8 * t + g;
    ok_x[t] = tile_ok && tok < rows;
    xr[t] = p.x + static_cast<int64_t>(lo + (ok_x[t] ? tok : 0)) * p.k + 8 * c;
  }
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;

  const int chunks = (p.k + 31) / 32;
  const int ch_begin = static_cast<int>(static_cast<int64_t>(chunks) * ks_idx / KS);
  const int ch_end = static_cast<int>(static_cast<int64_t>(chunks) * (ks_idx + 1) / KS);
  for (int ch = ch_begin; ch < ch_end; ch += kSkinnyUnroll) {
    uint4 va[kSkinnyUnroll], vb[kSkinnyUnroll];
#pragma unroll
    for (int u = 0; u < kSkinnyUnroll; ++u) {
      const int kk = (ch + u) * 32;
      const bool in_k = ch + u < ch_end && kk + 8 * c < p.k;  // k % 8 == 0: 8-wide pieces are all in or out
      va[u] = in_k && ok_a ? load_weights<kL2Prefetch>(wa + kk) : make_uint4(0, 0, 0, 0);
      vb[u] = in_k && ok_b ? load_weights<kL2Prefetch>(wb + kk) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kSkinnyUnroll; ++u) {
      const int kk = (ch + u) * 32;
      const bool in_k = ch + u < ch_end && kk + 8 * c < p.k;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (tok0 + 8 * t >= rows) break;  // warp-uniform: no token of this tile in the group
        const uint4 vx = in_k && ok_x[t] ? __ldg(reinterpret_cast<const uint4*>(xr[t] + kk)) : make_uint4(0, 0, 0, 0);
        mma_bf16_16x8x16(acc[t], va[u].x, vb[u].x, va[u].y, vb[u].y, vx.x, vx.y);
        mma_bf16_16x8x16(acc[t], va[u].z, vb[u].z, va[u].w, vb[u].w, vx.z, vx.w);
      }
    }
  }

  if constexpr (KS > 1) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) sm.red[warp][t][i][lane] = acc[t][i];
    __syncthreads();
    if (ks_idx == 0) {
#pragma unroll
      for (int s = 1; s < KS; ++s)
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[t][i] += sm.red[warp + s][t][i][lane];
    }
    __syncthreads();  // the next pass overwrites sm.red
  }
  if (ks_idx != 0 || !tile_ok) return;

#pragma unroll
  for (int t = 0; t < NT; ++t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // tokens 2c and 2c + 1 of tile t
      const int tok = tok0 + 8 * t + 2 * c + h;
      if (tok >= rows) continue;
      const int64_t out_row = static_cast<int64_t>(lo + tok);
      if constexpr (kFused) {
        const float v = silu(acc[t][h]) * acc[t][2 + h];
        p.y[out_row * p.ffn + row_a] = __float2bfloat16(v);
      } else {
        if (ok_a) p.y[out_row * p.n + row_a] = __float2bfloat16(acc[t][h]);
        if (ok_b) p.y[out_row * p.n + row_b] = __float2bfloat16(acc[t][2 + h]);
      }
    }
  }
}

template <bool kFused, bool kL2Prefetch, int KS, int NT>
__global__ void __launch_bounds__(kSkinnyWarps * 32) skinny_grouped_gemm_kernel(SkinnyParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(kSkinnyWarps % KS == 0, "k-split must divide the warps of a CTA");
  __shared__ SkinnyShared sm;
  const int warp = threadIdx.x / 32;
  const int ks_idx = warp % KS;
  const int tile = blockIdx.x * (kSkinnyWarps / KS) + warp / KS;
  for (int a = blockIdx.y;; a += gridDim.y) {
    int num_active = 0, lo = 0, hi = 0;
    const int grp = locate_group(p.offsets, p.num_groups, p.total_rows, a, num_active, lo, hi);
    if (grp < 0) return;  // CTA-uniform: every warp scans the same offsets
    const int rows = hi - lo;
    const __nv_bfloat16* w_g = p.w + static_cast<int64_t>(grp) * p.n * p.k;
    for (int tok0 = 0; tok0 < rows; tok0 += 8 * NT) skinny_pass<kFused, kL2Prefetch, KS, NT>(p, sm, lo, rows, tok0, w_g, tile, ks_idx);
    if (a + static_cast<int>(gridDim.y) >= num_active) return;
  }
#endif
}

// k-split per weight tile: enough warps streaming each tile's k range, yet >= 8 chunks (256 k)
// per warp so the fixed cost per warp (group scan, reduction) stays small.
int skinny_k_split(int64_t k) {
  const int64_t chunks = (k + 31) / 32;
  if (chunks >= 32) return 4;
  if (chunks >= 16) return 2;
  return 1;
}

using SkinnyKernel = void (*)(SkinnyParams);

template <bool kFused, bool kL2Prefetch, int KS>
SkinnyKernel pick_skinny_kernel_nt(int nt) {
  if (nt == 1) return skinny_grouped_gemm_kernel<kFused, kL2Prefetch, KS, 1>;
  if (nt == 2) return skinny_grouped_gemm_kernel<kFused, kL2Prefetch, KS, 2>;
  return skinny_grouped_gemm_kernel<kFused, kL2Prefetch, KS, kSkinnyTokenTiles>;
}

template <bool kFused, bool kL2Prefetch>
SkinnyKernel pick_skinny_kernel_ks(int ks, int nt) {
  if (ks == 4) return pick_skinny_kernel_nt<kFused, kL2Prefetch, 4>(nt);
  if (ks == 2) return pick_skinny_kernel_nt<kFused, kL2Prefetch, 2>(nt);
  return pick_skinny_kernel_nt<kFused, kL2Prefetch, 1>(nt);
}

template <bool kFused>
SkinnyKernel pick_skinny_kernel(bool l2_prefetch, int ks, int nt) {
  return l2_prefetch ? pick_skinny_kernel_ks<kFused, true>(ks, nt) : pick_skinny_kernel_ks<kFused, false>(ks, nt);
}

// Tuning of the weight stream (sweep in bench/results/skinny.md, H200): how many CTAs an SM may
// hold at once and whether weight loads carry the L2 256-byte prefetch hint. Small streams (tens of
// MB, e.g. Qwen3-30B experts at 1 token) are latency-bound and fastest uncapped without the hint;
// large ones (>= ~200 MB) gain 5-15% from the hint with at most 4 CTAs per SM (fewer concurrent
// short per-row bursts). The cap is enforced with unused dynamic shared memory.
// MOEBAL_SKINNY_CTAS_PER_SM / MOEBAL_SKINNY_L2_PREFETCH override both for benchmarks (read at each
// launch; 0 = no cap).
constexpr int64_t kSkinnyLargeStreamBytes = int64_t{160} << 20;
constexpr int kSkinnyLargeStreamCtasPerSm = 4;


// Dynamic shared memory that leaves room for at most `ctas_per_sm` CTAs of `kernel` on an SM.
size_t occupancy_cap_smem(SkinnyKernel kernel, int ctas_per_sm) {
  if (ctas_per_sm <= 0) return 0;
  const int natural = resident_ctas_per_sm(reinterpret_cast<const void*>(kernel), kSkinnyWarps * 32, 0);
  if (natural <= ctas_per_sm) return 0;
  int device = 0, smem_sm = 0, reserved = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&device));
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
  cudaFuncAttributes attr{};
  MOEBAL_CHECK_CUDA(cudaFuncGetAttributes(&attr, kernel));
  // ctas_per_sm footprints of smem_sm / ctas_per_sm fit, one more does not.
  const int64_t per_cta = (static_cast<int64_t>(smem_sm) / ctas_per_sm) / 256 * 256;
  const int64_t dyn = per_cta - reserved - static_cast<int64_t>(attr.sharedSizeBytes);
  if (dyn <= 0) return 0;
  MOEBAL_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)));
  return static_cast<size_t>(dyn);
}

template <bool kFused>
void launch_skinny(const SkinnyParams& sp, cudaStream_t stream) {
  const int ks = skinny_k_split(sp.k);
  const int tiles_per_cta = kSkinnyWarps / ks;
  const int64_t grid_x = (static_cast<int64_t>(sp.num_tiles) + tiles_per_cta - 1) / tiles_per_cta;
  // At most min(groups, rows) groups can be active; grid.y loops beyond 65535.
  const int64_t slots = std::min<int64_t>({sp.num_groups, sp.total_rows, 65535});
  MOEBAL_CHECK_ARG(grid_x <= 0x7fffffff, "grouped_gemm_bf16 (skinny): n too large: ", sp.n);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(slots));
  const dim3 block(kSkinnyWarps * 32);
  // Token tiles per pass: every group fits one pass when total_rows <= 8 * NT. Registers grow with
  // NT (more x fragments and accumulators), so the smallest sufficient NT keeps occupancy up.
  const int nt = sp.total_rows <= 8 ? 1 : sp.total_rows <= 16 ? 2 : kSkinnyTokenTiles;
  // Weight bytes streamed if every slot is a distinct active group (an upper bound).
  const bool large = slots * sp.n * static_cast<int64_t>(sp.k) * 2 > kSkinnyLargeStreamBytes;
  const bool l2_prefetch = tuning_env_int("MOEBAL_SKINNY_L2_PREFETCH", large ? 1 : 0) != 0;
  const auto kernel = pick_skinny_kernel<kFused>(l2_prefetch, ks, nt);
  const size_t smem =
      occupancy_cap_smem(kernel, tuning_env_int("MOEBAL_SKINNY_CTAS_PER_SM", large ? kSkinnyLargeStreamCtasPerSm : 0));
  kernel<<<grid, block, smem, stream>>>(sp);
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace

void skinny_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream) {
  if (p.total_rows == 0) return;
  const SkinnyParams sp{p.x,   p.w, p.y, p.offsets, p.num_groups, static_cast<int>(p.total_rows),
                        static_cast<int>(p.n), static_cast<int>(p.k), static_cast<int>((p.n + 15) / 16), 0};
  launch_skinny<false>(sp, stream);
}

void skinny_swiglu_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream) {
  if (p.total_rows == 0) return;
  MOEBAL_CHECK_ARG(p.n % 16 == 0, "skinny_swiglu_grouped_gemm: n = 2 * ffn must be a multiple of 16, got ", p.n);
  const int ffn = static_cast<int>(p.n / 2);
  const SkinnyParams sp{p.x, p.w, p.y, p.offsets, p.num_groups, static_cast<int>(p.total_rows),
                        static_cast<int>(p.n), static_cast<int>(p.k), ffn / 8, ffn};
  launch_skinny<true>(sp, stream);
}

}  // namespace moebal::cuda::detail
