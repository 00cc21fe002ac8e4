// Decode grouped GEMM on CUDA cores ("gemv"), portable sm_80+.
//
// At decode a group holds one or a few rows, so y = x @ W^T is a handful of matrix-vector
// products and the time is the time to stream the active experts' weights once. The kernel is
// built around that stream and nothing else:
//  - each warp owns NR consecutive weight rows (output features) of one active group and walks K
//    with one 16-byte load per lane, so a warp-wide load reads 512 contiguous bytes of a row (four
//    whole 128-byte lines); NR x U such loads (U consecutive 256-element chunks of each row) are
//    issued before any is used, so a warp keeps NR * U * 512 bytes in flight and the whole grid
//    active_groups * n * U * 512 bytes, whatever NR is;
//  - the group's token rows are processed R at a time (R = 1, 2, 4 or 8 from the host-known
//    total_rows): each lane loads the matching 16 bytes of each token row with __ldg (shared by all
//    warps of the CTA through L1) and reuses them across its NR weight rows; a group with more than
//    R rows streams its weights once per R rows (the front end picks this kernel only where rows
//    per group are few);
//  - bf16 -> fp32 by shifts, fp32 FMAs, then a warp reduce-scatter of the NR * R partial sums
//    (NR * R - 1 + log2(32 / (NR * R)) shuffles instead of 5 per value), bf16 stores;
//  - grid.y enumerates ACTIVE groups found on the device from the offsets (locate_group, as the
//    skinny kernel), so empty experts cost no CTAs and the host needs no per-group sizes.
// Tails: k a multiple of 8 but not of 256 (lanes past k load nothing), n not a multiple of NR
// (rows past n are not stored), offsets clamped into [0, total_rows] like the other kernels.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "grouped_gemm_device.cuh"
#include "grouped_gemm_internal.h"
#include "moebal/core/error.h"
#include "moebal/cuda/check.h"

namespace moebal::cuda::detail {
namespace {

constexpr int kGemvWarps = 8;    // warps per CTA
constexpr int kGemvChunk = 256;  // bf16 elements of one warp-wide load (32 lanes x 16 bytes)
constexpr int kGemvLoads = 8;    // NR * U: 16-byte weight loads in flight per lane

struct GemvParams {
  const __nv_bfloat16* x;  // [total_rows, k]
  const __nv_bfloat16* w;  // [num_groups, n, k]
  __nv_bfloat16* y;        // [total_rows, n]
  const int32_t* offsets;  // [num_groups + 1], device
  int num_groups;
  int total_rows;
  int n, k;
  int ffn;      // fused gate/up + SiLU(gate) * up only: n = 2 * ffn, y is [total_rows, ffn]
  int k_split;  // warps sharing one warp's weight rows, each over a k range (1, 2, 4 or 8)
};

// Partial sums of k-split warps: [warp][value index].
struct GemvShared {
  float red[kGemvWarps][32];
};

// 8 bf16 (one 16-byte load, element 2i in the low half of word i) to fp32.
__device__ __forceinline__ void bf16x8_to_float(const uint4& v, float (&f)[8]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// Warp reduce-scatter of V partial sums per lane (V a power of two <= 32): afterwards v[0] of lane
// L holds the warp-wide sum of value index(L); every index is held by 32 / V lanes, the lanes with
// L % (32 / V) == 0 being one each. Halving steps (H = V/2, V/4, .., 1 at lane offsets 16, 8, ..):
// a lane keeps the half of its values selected by the offset bit of its lane id and adds the
// partner's copy of that half; then plain butterfly steps over the remaining offsets.
template <int V, int H>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[V], int lane, int& idx) {
  if constexpr (H >= 1) {
    constexpr int kOff = 32 * H / V;
    const bool upper = (lane & kOff) != 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const float send = upper ? v[i] : v[i + H];
      const float keep = upper ? v[i + H] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kOff);
    }
    if (upper) idx += H;
    reduce_scatter_step<V, H / 2>(v, lane, idx);
  }
}

template <int V>
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[V], int lane, int& index) {
  static_assert(V >= 1 && V <= 32 && (V & (V - 1)) == 0, "V must be a power of two <= 32");
  int idx = 0;
  reduce_scatter_step<V, V / 2>(v, lane, idx);
#pragma unroll
  for (int off = 16 / V; off >= 1; off >>= 1) v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
  index = idx;
  return v[0];
}

// One pass over rows [r0, r0 + cnt) of the group (cnt <= R) for the warp's NR weight rows
// (w_rows[j], already offset by lane * 8): plain, rows out0 .. out0 + NR - 1 of y; fused, gate rows
// out0 .. out0 + NR/2 - 1 over the matching up rows, giving act features out0 .. out0 + NR/2 - 1.
// With k_split > 1 the warp covers k in [k_begin, k_end) and the k_split warps of the same rows
// (consecutive warps of the CTA, ks = 0 first) combine their sums through shared memory; every warp
// of the CTA calls this the same number of times (the barriers), live or not.
template <bool kFused, int R, int NR, bool kL2Prefetch>
__device__ __forceinline__ void gemv_pass(const GemvParams& p, GemvShared& sm, const __nv_bfloat16* const (&w_rows)[NR],
                                          int out0, int k_begin, int k_end, int ks, int r0, int cnt, int lane) {
  constexpr int U = kGemvLoads / NR;
  float acc[NR * R];
#pragma unroll
  for (int i = 0; i < NR * R; ++i) acc[i] = 0.0f;
  const __nv_bfloat16* xr = p.x + static_cast<int64_t>(r0) * p.k + lane * 8;

  for (int k0 = k_begin; k0 < k_end; k0 += U * kGemvChunk) {
    uint4 wv[NR][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool in_k = k0 + u * kGemvChunk + lane * 8 < k_end;  // k % 8 == 0: a lane's 8 are all in or out
#pragma unroll
      for (int j = 0; j < NR; ++j)
        wv[j][u] = in_k ? load_weights<kL2Prefetch>(w_rows[j] + k0 + u * kGemvChunk) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kGemvChunk;
      if (kk >= k_end) break;  // warp-uniform: no lane has k left in this chunk
      const bool in_k = kk + lane * 8 < k_end;
      float wf[NR][8];
#pragma unroll
      for (int j = 0; j < NR; ++j) bf16x8_to_float(wv[j][u], wf[j]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r >= cnt) break;  // warp-uniform
        const uint4 xv = in_k ? __ldg(reinterpret_cast<const uint4*>(xr + static_cast<int64_t>(r) * p.k + kk))
                              : make_uint4(0, 0, 0, 0);
        float xf[8];
        bf16x8_to_float(xv, xf);
#pragma unroll
        for (int j = 0; j < NR; ++j)
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[j * R + r] = fmaf(wf[j][e], xf[e], acc[j * R + r]);
      }
    }
  }

  int idx = 0;
  float sum = warp_reduce_scatter<NR * R>(acc, lane, idx);
  constexpr int kHolders = 32 / (NR * R);
  if (p.k_split > 1) {  // CTA-uniform
    const int warp = threadIdx.x / 32;
    if (lane % kHolders == 0) sm.red[warp][idx] = sum;
    __syncthreads();
    if (ks == 0)
      for (int s = 1; s < p.k_split; ++s) sum += sm.red[warp + s][idx];
    __syncthreads();  // the next pass overwrites sm.red
    if (ks != 0) return;
  }
  const int j = idx / R, r = idx % R;
  if constexpr (kFused) {
    // The first reduce-scatter step (offset 16) sent value indices [0, NR R / 2), the gate rows,
    // to lanes 0-15 and the up rows to lanes 16-31 with the same index below: lane L + 16 holds the
    // up value of lane L's gate value.
    const float up = __shfl_down_sync(0xffffffffu, sum, 16);
    if (lane < 16 && lane % kHolders == 0 && r < cnt && out0 + j < p.ffn)
      p.y[static_cast<int64_t>(r0 + r) * p.ffn + out0 + j] = __float2bfloat16(silu(sum) * up);
  } else {
    if (lane % kHolders == 0 && r < cnt && out0 + j < p.n)
      p.y[static_cast<int64_t>(r0 + r) * p.n + out0 + j] = __float2bfloat16(sum);
  }
}

// 3 CTAs (24 warps) per SM for the 1-2 token-row, 2-weight-row kernels (<= 85 registers), else 2.
template <bool kFused, int R, int NR, bool kL2Prefetch>
__global__ void __launch_bounds__(kGemvWarps * 32, R <= 2 && NR == 2 ? 3 : 2) gemv_grouped_gemm_kernel(GemvParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ GemvShared sm;
  constexpr int kOut = kFused ? NR / 2 : NR;  // outputs (y columns) per warp
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int ks = warp % p.k_split;
  const int out0 = (blockIdx.x * (kGemvWarps / p.k_split) + warp / p.k_split) * kOut;
  const int limit = kFused ? p.ffn : p.n;
  // Without k-split warps never synchronise: one past the last output leaves at once. With it, such a
  // warp (all k_split warps of its rows alike) keeps to the barriers with an empty k range.
  if (out0 >= limit && p.k_split == 1) return;
  const int chunks = (p.k + kGemvChunk - 1) / kGemvChunk;
  const int k_begin = out0 >= limit ? 0 : min(chunks * ks / p.k_split * kGemvChunk, p.k);
  const int k_end = out0 >= limit ? 0 : min(chunks * (ks + 1) / p.k_split * kGemvChunk, p.k);
  for (int a = blockIdx.y;; a += gridDim.y) {
    int num_active = 0, lo = 0, hi = 0;
    const int grp = locate_group(p.offsets, p.num_groups, p.total_rows, a, num_active, lo, hi);
    if (grp < 0) return;
    const __nv_bfloat16* w_g = p.w + static_cast<int64_t>(grp) * p.n * p.k + lane * 8;
    const __nv_bfloat16* w_rows[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) {  // outputs past the limit read the last row (k_split > 1: none), never stored
      const int row = min(out0 + j % kOut, limit - 1);
      w_rows[j] = w_g + static_cast<int64_t>(j < kOut ? row : p.ffn + row) * p.k;  // fused: j >= kOut are up rows
    }
    for (int r0 = lo; r0 < hi; r0 += R)
      gemv_pass<kFused, R, NR, kL2Prefetch>(p, sm, w_rows, out0, k_begin, k_end, ks, r0, min(R, hi - r0), lane);
    if (a + static_cast<int>(gridDim.y) >= num_active) return;
  }
#endif
}

using GemvKernel = void (*)(GemvParams);

template <bool kFused, int NR, bool kL2Prefetch>
GemvKernel pick_gemv_kernel_r(int r) {
  if (r == 1) return gemv_grouped_gemm_kernel<kFused, 1, NR, kL2Prefetch>;
  if (r == 2) return gemv_grouped_gemm_kernel<kFused, 2, NR, kL2Prefetch>;
  if (r == 4) return gemv_grouped_gemm_kernel<kFused, 4, NR, kL2Prefetch>;
  return gemv_grouped_gemm_kernel<kFused, 8, NR, kL2Prefetch>;
}

template <bool kFused, bool kL2Prefetch>
GemvKernel pick_gemv_kernel_nr(int nr, int r) {
  return nr == 2 ? pick_gemv_kernel_r<kFused, 2, kL2Prefetch>(r) : pick_gemv_kernel_r<kFused, 4, kL2Prefetch>(r);
}


// k-split: warps per weight-row block, each over 1 / k_split of k, combined through shared memory.
// A grid of few long weight rows (Mixtral-8x7B w2 at 1 token: 2 experts x 4096 rows of 14336) is
// ~1.3 waves of warps and its last wave streams alone; split, the same bytes come in more, shorter
// CTAs. But splitting costs a barrier + combine per pass and shortens each warp's stream, which
// loses where the grid already fills the GPU or k is short. Rule, fitted to the sweep of
// bench/results/gemv.md (H200, 1 token, bench/gemv_sweep.py; best k_split per case: Mixtral w2 4-8,
// GPT-OSS w2 2, all others 1 or within 2%): double k_split while the warp blocks number < 3 x the
// warps resident on the GPU (occupancy query) and every warp keeps >= 6 chunks of 256 k.
constexpr int kGemvTargetWaves = 3;
constexpr int kGemvMinChunksPerWarp = 6;

template <bool kFused>
int gemv_k_split(GemvKernel kernel, const GemvParams& gp, int nr, int sm_count) {
  const int forced = tuning_env_int("MOEBAL_GEMV_K_SPLIT", 0);
  if (forced == 1 || forced == 2 || forced == 4 || forced == 8) return forced;
  const int ctas_per_sm = resident_ctas_per_sm(reinterpret_cast<const void*>(kernel), kGemvWarps * 32, 0);
  const int64_t resident_warps = int64_t{std::max(ctas_per_sm, 1)} * kGemvWarps * sm_count;
  const int64_t slots = std::min<int64_t>(gp.num_groups, gp.total_rows);  // active groups, at most
  const int outs = kFused ? nr / 2 : nr;
  const int64_t warp_blocks = slots * (((kFused ? gp.ffn : gp.n) + outs - 1) / outs);
  const int64_t chunks = (gp.k + kGemvChunk - 1) / kGemvChunk;
  int ks = 1;
  while (ks < kGemvWarps && warp_blocks * ks < kGemvTargetWaves * resident_warps &&
         chunks >= int64_t{kGemvMinChunksPerWarp} * 2 * ks)
    ks *= 2;
  return ks;
}

template <bool kFused>
void launch_gemv(GemvParams gp, int sm_count, cudaStream_t stream) {
  // Token rows per pass: the smallest of 1, 2, 4, 8 that holds every row when total_rows <= 8.
  const int r = gp.total_rows <= 1 ? 1 : gp.total_rows <= 2 ? 2 : gp.total_rows <= 4 ? 4 : 8;
  // Weight rows per warp: 2 (4 chunks of each in flight) for 1-2 token rows; 4 (2 chunks each) for
  // more, so each converted token chunk feeds more FMAs. MOEBAL_GEMV_ROWS_PER_WARP (2 or 4),
  // MOEBAL_GEMV_K_SPLIT (1, 2, 4, 8) and MOEBAL_GEMV_L2_PREFETCH (0/1, the L2::256B hint on weight
  // loads) override for benchmarks (read at each launch).
  int nr = tuning_env_int("MOEBAL_GEMV_ROWS_PER_WARP", r <= 2 ? 2 : 4);
  nr = nr == 2 ? 2 : 4;
  const bool l2_prefetch = tuning_env_int("MOEBAL_GEMV_L2_PREFETCH", 0) != 0;
  const GemvKernel kernel =
      l2_prefetch ? pick_gemv_kernel_nr<kFused, true>(nr, r) : pick_gemv_kernel_nr<kFused, false>(nr, r);
  gp.k_split = gemv_k_split<kFused>(kernel, gp, nr, sm_count);
  const int64_t outs_per_cta = int64_t{kGemvWarps / gp.k_split} * (kFused ? nr / 2 : nr);
  const int64_t grid_x = ((kFused ? gp.ffn : gp.n) + outs_per_cta - 1) / outs_per_cta;
  // At most min(groups, rows) groups can be active; grid.y loops beyond 65535.
  const int64_t slots = std::min<int64_t>({gp.num_groups, gp.total_rows, 65535});
  MOEBAL_CHECK_ARG(grid_x <= 0x7fffffff, "grouped_gemm_bf16 (gemv): n too large: ", gp.n);
  kernel<<<dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(slots)), kGemvWarps * 32, 0, stream>>>(gp);
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace

void gemv_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream) {
  if (p.total_rows == 0) return;
  launch_gemv<false>(GemvParams{p.x, p.w, p.y, p.offsets, p.num_groups, static_cast<int>(p.total_rows),
                                static_cast<int>(p.n), static_cast<int>(p.k), 0, 1},
                     p.sm_count, stream);
}

void gemv_swiglu_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream) {
  if (p.total_rows == 0) return;
  MOEBAL_CHECK_ARG(p.n % 16 == 0, "gemv_swiglu_grouped_gemm: n = 2 * ffn must be a multiple of 16, got ", p.n);
  launch_gemv<true>(GemvParams{p.x, p.w, p.y, p.offsets, p.num_groups, static_cast<int>(p.total_rows),
                               static_cast<int>(p.n), static_cast<int>(p.k), static_cast<int>(p.n / 2), 1},
                    p.sm_count, stream);
}

}  // namespace moebal::cuda::detail
