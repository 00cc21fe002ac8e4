// Grouped expert GEMM front end: argument checks, kernel choice, the portable WMMA kernel, and
// the expert FFN: at decode the skinny or gemv gate/up GEMM with SiLU(gate) * up in its epilogue
// followed by the down GEMM on the same kernel; otherwise a gate GEMM, an up GEMM with
// SiLU(gate) * up in its epilogue and the down GEMM, or (where that measured slower) one gate/up
// GEMM, a separate SiLU(gate) * up pass and the down GEMM.
#include <mma.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "grouped_gemm_device.cuh"
#include "grouped_gemm_internal.h"
#include "moebal/core/error.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/grouped_gemm.h"

namespace moebal::cuda::detail {

int tuning_env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long parsed = std::strtol(v, &end, 10);
  MOEBAL_CHECK_ARG(errno == 0 && *end == '\0' && parsed >= INT32_MIN && parsed <= INT32_MAX, "environment variable ",
                   name, " must be an integer, got '", v, "'");
  return static_cast<int>(parsed);
}

int resident_ctas_per_sm(const void* kernel, int threads, size_t smem) {
  int device = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&device));
  using Key = std::tuple<const void*, int, size_t, int>;
  static std::mutex mu;
  static std::map<Key, int> cache;
  const Key key{kernel, threads, smem, device};
  {
    const std::lock_guard<std::mutex> lock(mu);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  int ctas = 0;
  MOEBAL_CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, kernel, threads, smem));
  const std::lock_guard<std::mutex> lock(mu);
  cache.emplace(key, ctas);
  return ctas;
}

}  // namespace moebal::cuda::detail

namespace moebal::cuda {
namespace {

using detail::GroupedGemmProblem;

// ---------------------------------------------------------------------------------------------
// Portable kernel: 64 x 64 output tiles, k steps of 32, 4 warps of 2 x 2 WMMA 16x16x16 bf16
// fragments with fp32 accumulators. Grid (n tiles, groups, z): the CTAs of group g walk its row
// tiles z, z + gridDim.z, ... so empty groups exit at once and skewed groups need no host plan.
// ---------------------------------------------------------------------------------------------
constexpr int kBM = 64, kBN = 64, kBK = 32, kPad = 8, kWarps = 4;

__global__ void __launch_bounds__(kWarps * 32)
    portable_grouped_gemm_kernel(GroupedGemmProblem p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  __shared__ alignas(128) __nv_bfloat16 a_s[kBM][kBK + kPad];
  __shared__ alignas(128) __nv_bfloat16 b_s[kBN][kBK + kPad];
  __shared__ alignas(128) float c_s[kBM][kBN + 4];

  const int g = blockIdx.y;
  const int64_t lo = min(max(static_cast<int64_t>(p.offsets[g]), int64_t{0}), p.total_rows);
  const int64_t hi = min(max(static_cast<int64_t>(p.offsets[g + 1]), lo), p.total_rows);
  const int64_t rows = hi - lo;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const __nv_bfloat16* w_g = p.w + static_cast<int64_t>(g) * p.group_stride();
  const int warp = threadIdx.x / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;

  for (int64_t m0 = static_cast<int64_t>(blockIdx.z) * kBM; m0 < rows; m0 += static_cast<int64_t>(gridDim.z) * kBM) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    for (int64_t k0 = 0; k0 < p.k; k0 += kBK) {
      // 64 rows x 32 k = 256 chunks of 8 bf16 per operand: 2 per thread each.
#pragma unroll
      for (int c = threadIdx.x; c < kBM * kBK / 8; c += kWarps * 32) {
        const int r = c / (kBK / 8), kc = (c % (kBK / 8)) * 8;
        const int64_t kk = k0 + kc;
        uint4 va = make_uint4(0, 0, 0, 0), vb = make_uint4(0, 0, 0, 0);
        if (m0 + r < rows && kk < p.k)
          va = *reinterpret_cast<const uint4*>(p.x + (lo + m0 + r) * p.k + kk);
        if (n0 + r < p.n && kk < p.k) vb = *reinterpret_cast<const uint4*>(w_g + (n0 + r) * p.k + kk);
        *reinterpret_cast<uint4*>(&a_s[r][kc]) = va;
        *reinterpret_cast<uint4*>(&b_s[r][kc]) = vb;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &a_s[wm + 16 * i][kk], kBK + kPad);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &b_s[wn + 16 * j][kk], kBK + kPad);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&c_s[wm + 16 * i][wn + 16 * j], acc[i][j], kBN + 4, wmma::mem_row_major);
    __syncthreads();
    for (int c = threadIdx.x; c < kBM * kBN / 8; c += kWarps * 32) {
      const int r = c / (kBN / 8), nc = (c % (kBN / 8)) * 8;
      if (m0 + r >= rows || n0 + nc >= p.n) continue;  // n is a multiple of 8
      const int64_t at = (lo + m0 + r) * p.n + n0 + nc;
      alignas(16) __nv_bfloat16 out[8];
      if (p.c != nullptr) {  // SwiGLU epilogue: y = silu(gate) * acc
        alignas(16) __nv_bfloat16 gate[8];
        *reinterpret_cast<uint4*>(gate) = *reinterpret_cast<const uint4*>(p.c + at);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = __float2bfloat16(detail::silu(__bfloat162float(gate[e])) * c_s[r][nc + e]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = __float2bfloat16(c_s[r][nc + e]);
      }
      *reinterpret_cast<uint4*>(p.y + at) = *reinterpret_cast<const uint4*>(out);
    }
    __syncthreads();
  }
#endif
}

void portable_grouped_gemm(const GroupedGemmProblem& p, cudaStream_t stream) {
  const int64_t n_tiles = (p.n + kBN - 1) / kBN;
  const int64_t row_tiles = (p.total_rows + kBM - 1) / kBM;
  // Enough z-slices for a group holding every row to get a CTA per row tile when rows are few;
  // beyond that the slices loop. Most CTAs of empty groups exit after reading two offsets.
  const int64_t per_group = (row_tiles + p.num_groups - 1) / p.num_groups;
  const int64_t z = std::min<int64_t>(row_tiles, std::max<int64_t>(4 * per_group, 8));
  MOEBAL_CHECK_ARG(n_tiles <= 0x7fffffff, "grouped_gemm_bf16: n too large: ", p.n);
  const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(p.num_groups),
                  static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(z, 1), 65535)));
  portable_grouped_gemm_kernel<<<grid, kWarps * 32, 0, stream>>>(p);
  MOEBAL_CHECK_LAUNCH();
}

// a[r, c] = silu(h[r, c]) * h[r, ffn + c], 8 bf16 per thread, fp32 math, for the rows below
// *rows_end (offsets[num_groups]: rows after the last group belong to no expert, e.g. padding pairs
// of the MoE layer, and are skipped), at most `rows`.
__global__ void silu_mul_kernel(const __nv_bfloat16* __restrict__ h, __nv_bfloat16* __restrict__ a,
                                int64_t rows, const int32_t* __restrict__ rows_end, int64_t ffn) {
  const int64_t chunks_per_row = ffn / 8;
  const int64_t total = min(rows, max(int64_t{0}, static_cast<int64_t>(__ldg(rows_end)))) * chunks_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / chunks_per_row, c = (i % chunks_per_row) * 8;
    const uint4 gv = *reinterpret_cast<const uint4*>(h + r * 2 * ffn + c);
    const uint4 uv = *reinterpret_cast<const uint4*>(h + r * 2 * ffn + ffn + c);
    const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&gv);
    const __nv_bfloat162* u2 = reinterpret_cast<const __nv_bfloat162*>(&uv);
    uint4 out;
    __nv_bfloat162* o2 = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 gf = __bfloat1622float2(g2[e]);
      const float2 uf = __bfloat1622float2(u2[e]);
      const float s0 = gf.x / (1.0f + __expf(-gf.x)), s1 = gf.y / (1.0f + __expf(-gf.y));
      o2[e] = __floats2bfloat162_rn(s0 * uf.x, s1 * uf.y);
    }
    *reinterpret_cast<uint4*>(a + r * ffn + c) = out;
  }
}

struct DeviceInfo {
  int device = 0, major = 0, minor = 0, sm_count = 0;
};

DeviceInfo device_info(int device) {
  DeviceInfo d;
  d.device = device;
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, device));
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, device));
  return d;
}

DeviceInfo current_device_info() {
  int device = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&device));
  return device_info(device);
}

bool hopper_ok(const DeviceInfo& d) {
#if defined(MOEBAL_HAS_SM90_KERNELS)
  return d.major == 9 && d.minor == 0;  // sm_90a code runs on compute capability 9.0 only
#else
  (void)d;
  return false;
#endif
}

// Rows per active group up to which each swap-AB kernel is used, from the forced-kernel columns
// of bench/results/gemm.md (H200): small_m wins only with very few output tiles (<= 4 rows per
// group); medium_m wins up to ~32 balanced rows per group, but with skewed routing at 32 rows per
// group the hot experts favour large_m, hence 24. Active groups are at most
// min(num_groups, total_rows); the host does not know per-group sizes.
constexpr int64_t kSmallMRowsPerGroup = 4;
constexpr int64_t kMediumMRowsPerGroup = 24;
// Skinny kernel (bench/results/skinny.md, forced-kernel columns on H100 and H200): on Hopper it
// beat the CUTLASS kernels only for small experts at the smallest batches (Qwen3-30B-A3B at 1
// token), where the gemv kernel below is faster still (bench/results/gemv.md), so Hopper no longer
// picks it. Without the Hopper kernels it replaces the untuned 64-row-tile portable kernel at
// decode (few rows per group; not measured on such a device).
constexpr int64_t kSkinnyPortableAllRows = 32;
constexpr int64_t kSkinnyPortableRowsPerGroup = 8;
// gemv kernel (bench/results/gemv.md, forced-kernel columns of bench/kernels_gemm.py, H200): at 1
// token (total_rows = top_k = 2, 4, 8 rows, one per active expert) it is faster than the previous
// auto choice (small_m, or skinny for Qwen3-30B-A3B) for both projections and the FFN of all four
// bench models, balanced and Zipf (1.03-1.28x per GEMM, 1.06-1.26x for the FFN); at 16 tokens
// (32-128 rows) it is slower in every case (0.48-0.91x: R = 8 rows per pass, hot experts re-streamed
// per 8 rows, CUDA-core FMAs).
// At 2-4 tokens on the H100 (bench/results/gemv.md, "H100 check at 2 and 4 tokens") it still wins
// while the rows spread one or so per expert (GPT-OSS-120B at 2 tokens: 8 rows over 128 experts,
// 1.03-1.18x over small_m), but loses where rows pile onto few experts: Mixtral-8x7B with 4-8 rows
// over its 8 experts, 0.89-0.98x with Zipf routing and at 4 tokens. With small experts it wins up
// to 32 rows: Qwen3-30B-A3B (w13 1536 x 2048) at 2-4 tokens, 16-32 rows over 128 experts,
// 1.02-1.26x per GEMM and 1.04-1.26x for the FFN (against the 3-launch CUTLASS FFN), while the
// large experts of DeepSeek-V3 and GPT-OSS-120B tie or lose there (0.94-1.05x). Hence gemv on
// Hopper when 2 * total_rows < num_groups (about one row per active expert) and total_rows <= 8,
// or <= 32 with experts of at most 4 Mi weights; nothing beyond. Not measured on other sm_80+
// devices: there the skinny rule stays.
constexpr int64_t kGemvHopperRows = 8;
constexpr int64_t kGemvHopperSmallExpertRows = 32;
constexpr int64_t kGemvSmallExpertWeights = int64_t{4} << 20;

// Split launch (see run_split below; bench/results/split.md, H100, three runs): it paid where many
// experts with large weights share a middle-sized problem, so that a skewed routing leaves both hot
// groups and a long tail: DeepSeek-V3 (256 experts, 28 Mi weights) at 32 and 128 rows per group,
// 1.02-1.18x with Zipf routing and 0.99-1.01x with balanced routing; GPT-OSS-120B (128 experts,
// 16 Mi) 0.99-1.04x. It lost up to 8% on Qwen3-30B-A3B's 3 Mi experts, cannot help 8
// experts (Mixtral-8x7B), and from 512 rows per group on every group is large anyway.
constexpr int64_t kSplitMaxRowsPerGroup = 256;
constexpr int kSplitMinGroups = 32;
constexpr int64_t kSplitMinWeights = int64_t{8} << 20;

GroupedGemmKernel pick(const DeviceInfo& d, int num_groups, int64_t total_rows, int64_t n, int64_t k) {
  const int64_t active = std::max<int64_t>(1, std::min<int64_t>(num_groups, total_rows));
  const int64_t per_group = total_rows / active;
  if (!hopper_ok(d)) {
    if (d.major >= 8 && (total_rows <= kSkinnyPortableAllRows || per_group <= kSkinnyPortableRowsPerGroup))
      return GroupedGemmKernel::kSkinny;
    return GroupedGemmKernel::kPortable;
  }
  if (2 * total_rows < num_groups &&
      (total_rows <= kGemvHopperRows || (total_rows <= kGemvHopperSmallExpertRows && n * k <= kGemvSmallExpertWeights)))
    return GroupedGemmKernel::kGemv;
  if (per_group <= kSmallMRowsPerGroup) return GroupedGemmKernel::kHopperSmallM;
  if (per_group <= kMediumMRowsPerGroup) return GroupedGemmKernel::kHopperMediumM;
  if (per_group <= kSplitMaxRowsPerGroup && num_groups >= kSplitMinGroups && n * k >= kSplitMinWeights)
    return GroupedGemmKernel::kHopperSplit;
  return GroupedGemmKernel::kHopperLargeM;
}

size_t align256(size_t v) { return (v + 255) / 256 * 256; }

// ---------------------------------------------------------------------------------------------
// Split launch (kHopperSplit). With skewed routing one problem holds both kinds of group: a few hot
// experts with hundreds to thousands of rows (compute-bound on 128 x 256 tiles, their weights
// re-read from L2 by the CTAs of neighbouring row tiles) and a long tail of a few rows each (bound
// by streaming their weights once). The split launch runs the large groups on the large_m kernel,
// then the groups of at most MOEBAL_GEMM_SPLIT_ROWS rows (default 64, medium_m's token tile: such a
// group streams each weight tile exactly once) on the medium_m kernel, both over every SM on the
// caller's stream. Each kernel sees every group; its setup kernel gives the other class's groups a
// zero extent, so the class of a group is decided on the device (no host synchronisation).
// Measured on the H100 (bench/results/split.md): 1.02-1.18x over large_m alone for DeepSeek-V3
// with Zipf routing at 1024-4096 tokens, ties with balanced routing; up to 8% slower for
// Qwen3-30B-A3B's small experts (the second launch costs more than it saves). Running the two
// kernels at the same time on disjoint SM shares (a side stream) measured slower in most cases:
// the large groups lose the SMs they need.
// ---------------------------------------------------------------------------------------------
#if defined(MOEBAL_HAS_SM90_KERNELS)
constexpr int kSplitRows = 64;

struct SplitWorkspace {
  size_t light, total;  // the light kernel's part first, the heavy kernel's after it
};

SplitWorkspace split_workspace(int num_groups, int sm_count, bool swiglu) {
  const size_t light = align256((swiglu ? detail::sm90_medium_m_swiglu_workspace_bytes
                                        : detail::sm90_medium_m_workspace_bytes)(num_groups, sm_count));
  const size_t heavy = (swiglu ? detail::sm90_large_m_swiglu_workspace_bytes
                               : detail::sm90_large_m_workspace_bytes)(num_groups, sm_count);
  return {light, light + heavy};
}

void run_split(const DeviceInfo& d, const GroupedGemmProblem& p, void* workspace, size_t bytes, cudaStream_t stream) {
  const int rows = detail::tuning_env_int("MOEBAL_GEMM_SPLIT_ROWS", kSplitRows);
  MOEBAL_CHECK_ARG(rows >= 0, "environment variable MOEBAL_GEMM_SPLIT_ROWS must be >= 0, got ", rows);
  const bool swiglu = p.c != nullptr;
  const SplitWorkspace ws = split_workspace(p.num_groups, d.sm_count, swiglu);
  MOEBAL_CHECK_ARG(workspace != nullptr && bytes >= ws.total, "grouped_gemm_bf16: workspace of ", bytes,
                   " bytes is smaller than the ", ws.total, " bytes the split launch needs");
  GroupedGemmProblem heavy = p, light = p;
  heavy.rows_lo = rows == INT32_MAX ? INT32_MAX : rows + 1;
  light.rows_hi = rows;
  char* base = static_cast<char*>(workspace);
  (swiglu ? detail::sm90_large_m_swiglu_grouped_gemm : detail::sm90_large_m_grouped_gemm)(
      heavy, base + ws.light, bytes - ws.light, stream);
  (swiglu ? detail::sm90_medium_m_swiglu_grouped_gemm : detail::sm90_medium_m_grouped_gemm)(light, base, ws.light,
                                                                                           stream);
}
#endif

size_t hopper_workspace(int num_groups, const DeviceInfo& d) {
#if defined(MOEBAL_HAS_SM90_KERNELS)
  if (hopper_ok(d))
    return std::max({detail::sm90_small_m_workspace_bytes(num_groups, d.sm_count),
                     detail::sm90_medium_m_workspace_bytes(num_groups, d.sm_count),
                     detail::sm90_large_m_workspace_bytes(num_groups, d.sm_count),
                     detail::sm90_small_m_swiglu_workspace_bytes(num_groups, d.sm_count),
                     detail::sm90_medium_m_swiglu_workspace_bytes(num_groups, d.sm_count),
                     detail::sm90_large_m_swiglu_workspace_bytes(num_groups, d.sm_count),
                     split_workspace(num_groups, d.sm_count, false).total,
                     split_workspace(num_groups, d.sm_count, true).total});
#endif
  (void)num_groups;
  (void)d;
  return 0;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

void check_problem(const char* fn, const void* x, const void* w, const void* y, const int32_t* offsets,
                   int num_groups, int64_t total_rows, int64_t n, int64_t k) {
  MOEBAL_CHECK_ARG(num_groups >= 1, fn, ": num_groups must be >= 1, got ", num_groups);
  MOEBAL_CHECK_ARG(total_rows >= 0 && total_rows <= INT32_MAX, fn, ": total_rows must be in [0, 2^31), got ",
                   total_rows);
  MOEBAL_CHECK_ARG(n > 0 && n % 8 == 0 && n <= INT32_MAX, fn, ": n must be a positive multiple of 8, got ", n);
  MOEBAL_CHECK_ARG(k > 0 && k % 8 == 0 && k <= INT32_MAX, fn, ": k must be a positive multiple of 8, got ", k);
  MOEBAL_CHECK_ARG(offsets != nullptr, fn, ": offsets is null");
  MOEBAL_CHECK_ARG(w != nullptr && aligned16(w), fn, ": w must be a non-null 16-byte aligned pointer");
  if (total_rows > 0) {
    MOEBAL_CHECK_ARG(x != nullptr && aligned16(x), fn, ": x must be a non-null 16-byte aligned pointer");
    MOEBAL_CHECK_ARG(y != nullptr && aligned16(y), fn, ": y must be a non-null 16-byte aligned pointer");
  }
}

void run_grouped(GroupedGemmKernel kernel, const DeviceInfo& d, const GroupedGemmProblem& p, void* workspace,
                 size_t workspace_bytes, cudaStream_t stream) {
  if (p.total_rows == 0) return;
  if (kernel == GroupedGemmKernel::kAuto) kernel = pick(d, p.num_groups, p.total_rows, p.n, p.k);
  if (kernel == GroupedGemmKernel::kPortable) {
    portable_grouped_gemm(p, stream);
    return;
  }
  MOEBAL_CHECK((p.c == nullptr && p.w_group_stride == 0) ||
                   (kernel != GroupedGemmKernel::kSkinny && kernel != GroupedGemmKernel::kGemv),
               "grouped_gemm_bf16: internal error: the decode kernels read packed w13 and fuse SwiGLU from it");
  if (kernel == GroupedGemmKernel::kSkinny) {
    MOEBAL_CHECK_ARG(d.major >= 8, "grouped_gemm_bf16: kernel skinny needs compute capability 8.0 or newer; device ",
                     d.device, " is ", d.major, ".", d.minor);
    detail::skinny_grouped_gemm(p, stream);
    return;
  }
  if (kernel == GroupedGemmKernel::kGemv) {
    MOEBAL_CHECK_ARG(d.major >= 8, "grouped_gemm_bf16: kernel gemv needs compute capability 8.0 or newer; device ",
                     d.device, " is ", d.major, ".", d.minor);
    detail::gemv_grouped_gemm(p, stream);
    return;
  }
  MOEBAL_CHECK_ARG(hopper_ok(d), "grouped_gemm_bf16: kernel ", to_string(kernel),
                   " needs compute capability 9.0 and moebal built with sm_90a kernels; device ", d.device,
                   " is ", d.major, ".", d.minor);
#if defined(MOEBAL_HAS_SM90_KERNELS)
  const bool swiglu = p.c != nullptr;
  if (kernel == GroupedGemmKernel::kHopperSplit) {
    run_split(d, p, workspace, workspace_bytes, stream);
  } else if (kernel == GroupedGemmKernel::kHopperSmallM) {
    (swiglu ? detail::sm90_small_m_swiglu_grouped_gemm : detail::sm90_small_m_grouped_gemm)(p, workspace,
                                                                                           workspace_bytes, stream);
  } else if (kernel == GroupedGemmKernel::kHopperMediumM) {
    (swiglu ? detail::sm90_medium_m_swiglu_grouped_gemm : detail::sm90_medium_m_grouped_gemm)(p, workspace,
                                                                                             workspace_bytes, stream);
  } else {
    MOEBAL_CHECK_ARG(kernel == GroupedGemmKernel::kHopperLargeM, "grouped_gemm_bf16: unknown kernel ",
                     static_cast<int>(kernel));
    (swiglu ? detail::sm90_large_m_swiglu_grouped_gemm : detail::sm90_large_m_grouped_gemm)(p, workspace,
                                                                                           workspace_bytes, stream);
  }
#else
  (void)workspace;
  (void)workspace_bytes;
  (void)stream;
#endif
}

// Expert FFN off the decode kernels: SiLU(gate) * up in the up GEMM's epilogue (gate and up as two
// GEMMs over the halves of w13), or one w13 GEMM plus a separate activation pass. The epilogue form
// saves writing and re-reading the [rows, 2 * ffn] gate/up tensor (4 * ffn bytes per row) and a
// launch, but pays a second GEMM's launch and wave tail, two N = ffn GEMMs instead of one
// N = 2 * ffn, and the epilogue's gate loads. Both forced on the H100 (bench/results/swiglu.md):
// over the four bench models at 16-16384 tokens the epilogue form tied or lost (4-11% for
// Mixtral-8x7B and Qwen3-30B-A3B); an apparent 1.03-1.04x win for DeepSeek-V3 at 4096-16384 tokens
// did not survive timing the variants in interleaved rounds (separate / epilogue time 0.98-1.02 at
// 4096 tokens, 0.95-1.00 at 16384, two repetitions). So kAuto always takes the separate pass;
// MOEBAL_FFN_SWIGLU_EPILOGUE=1 asks for the epilogue form (benchmarks, other cards), 0 or unset
// for the separate pass, anything else is an error.
bool swiglu_epilogue_requested() {
  const int v = detail::tuning_env_int("MOEBAL_FFN_SWIGLU_EPILOGUE", 0);
  MOEBAL_CHECK_ARG(v == 0 || v == 1, "environment variable MOEBAL_FFN_SWIGLU_EPILOGUE must be 0 or 1, got ", v);
  return v == 1;
}

}  // namespace

const char* to_string(GroupedGemmKernel kernel) {
  switch (kernel) {
    case GroupedGemmKernel::kAuto: return "auto";
    case GroupedGemmKernel::kPortable: return "portable";
    case GroupedGemmKernel::kHopperSmallM: return "hopper_small_m";
    case GroupedGemmKernel::kHopperMediumM: return "hopper_medium_m";
    case GroupedGemmKernel::kHopperLargeM: return "hopper_large_m";
    case GroupedGemmKernel::kSkinny: return "skinny";
    case GroupedGemmKernel::kGemv: return "gemv";
    case GroupedGemmKernel::kHopperSplit: return "hopper_split";
  }
  return "unknown";
}

bool hopper_grouped_gemm_available(int device) { return hopper_ok(device_info(device)); }

GroupedGemmKernel pick_grouped_gemm_kernel(int device, int num_groups, int64_t total_rows, int64_t n, int64_t k) {
  return pick(device_info(device), num_groups, total_rows, n, k);
}

size_t grouped_gemm_workspace_bytes(int num_groups) {
  MOEBAL_CHECK_ARG(num_groups >= 1, "grouped_gemm_workspace_bytes: num_groups must be >= 1, got ", num_groups);
  return hopper_workspace(num_groups, current_device_info());
}

void grouped_gemm_bf16_with(GroupedGemmKernel kernel, const __nv_bfloat16* x, const __nv_bfloat16* w,
                            __nv_bfloat16* y, const int32_t* offsets, int num_groups, int64_t total_rows,
                            int64_t n, int64_t k, void* workspace, size_t workspace_bytes,
                            cudaStream_t stream) {
  check_problem("grouped_gemm_bf16", x, w, y, offsets, num_groups, total_rows, n, k);
  const DeviceInfo d = current_device_info();
  const GroupedGemmProblem p{x, w, y, offsets, num_groups, total_rows, n, k, d.sm_count};
  run_grouped(kernel, d, p, workspace, workspace_bytes, stream);
}

void grouped_gemm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                       const int32_t* offsets, int num_groups, int64_t total_rows, int64_t n, int64_t k,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  grouped_gemm_bf16_with(GroupedGemmKernel::kAuto, x, w, y, offsets, num_groups, total_rows, n, k, workspace,
                         workspace_bytes, stream);
}

size_t expert_ffn_workspace_bytes(int num_groups, int64_t total_rows, int64_t ffn) {
  MOEBAL_CHECK_ARG(total_rows >= 0, "expert_ffn_workspace_bytes: total_rows must be >= 0, got ", total_rows);
  MOEBAL_CHECK_ARG(ffn > 0, "expert_ffn_workspace_bytes: ffn must be > 0, got ", ffn);
  // h [rows, 2 * ffn] (the separate-activation path; the SwiGLU-epilogue path puts gate [rows, ffn]
  // there), act [rows, ffn] (the decode kernels use act only), the GEMM workspace.
  const size_t h = align256(static_cast<size_t>(total_rows) * 2 * ffn * sizeof(__nv_bfloat16));
  const size_t a = align256(static_cast<size_t>(total_rows) * ffn * sizeof(__nv_bfloat16));
  return h + a + grouped_gemm_workspace_bytes(num_groups);
}

void expert_ffn_bf16_with(GroupedGemmKernel kernel, const __nv_bfloat16* x, const __nv_bfloat16* w13,
                          const __nv_bfloat16* w2, __nv_bfloat16* y, const int32_t* offsets, int num_groups,
                          int64_t total_rows, int64_t hidden, int64_t ffn, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  check_problem("expert_ffn_bf16", x, w13, y, offsets, num_groups, total_rows, 2 * ffn, hidden);
  MOEBAL_CHECK_ARG(ffn % 8 == 0, "expert_ffn_bf16: ffn must be a multiple of 8, got ", ffn);
  MOEBAL_CHECK_ARG(w2 != nullptr && aligned16(w2), "expert_ffn_bf16: w2 must be a non-null 16-byte aligned pointer");
  const size_t need = expert_ffn_workspace_bytes(num_groups, total_rows, ffn);
  MOEBAL_CHECK_ARG(workspace_bytes >= need && (need == 0 || workspace != nullptr),
                   "expert_ffn_bf16: workspace of ", workspace_bytes, " bytes is smaller than the ", need,
                   " bytes needed");
  const bool epilogue = swiglu_epilogue_requested();  // read (and checked) on every path
  if (total_rows == 0) return;
  char* ws = static_cast<char*>(workspace);
  MOEBAL_CHECK_ARG(aligned16(ws), "expert_ffn_bf16: workspace must be 16-byte aligned");
  const DeviceInfo d = current_device_info();
  // One choice for both GEMMs, made on the gate/up projection (the larger of the two).
  if (kernel == GroupedGemmKernel::kAuto) kernel = pick(d, num_groups, total_rows, 2 * ffn, hidden);

  if (kernel == GroupedGemmKernel::kSkinny || kernel == GroupedGemmKernel::kGemv) {
    // Two launches: gate/up GEMM with SiLU(gate) * up in the epilogue into act [rows, ffn], then
    // the down GEMM. No [rows, 2 * ffn] intermediate.
    const bool skinny = kernel == GroupedGemmKernel::kSkinny;
    MOEBAL_CHECK_ARG(d.major >= 8, "expert_ffn_bf16: kernel ", to_string(kernel),
                     " needs compute capability 8.0 or newer; device ", d.device, " is ", d.major, ".", d.minor);
    auto* act = reinterpret_cast<__nv_bfloat16*>(ws);
    const GroupedGemmProblem up{x, w13, act, offsets, num_groups, total_rows, 2 * ffn, hidden, d.sm_count};
    const GroupedGemmProblem down{act, w2, y, offsets, num_groups, total_rows, hidden, ffn, d.sm_count};
    if (skinny) {
      detail::skinny_swiglu_grouped_gemm(up, stream);
      detail::skinny_grouped_gemm(down, stream);
    } else {
      detail::gemv_swiglu_grouped_gemm(up, stream);
      detail::gemv_grouped_gemm(down, stream);
    }
    return;
  }

  const size_t h_bytes = align256(static_cast<size_t>(total_rows) * 2 * ffn * sizeof(__nv_bfloat16));
  const size_t a_bytes = align256(static_cast<size_t>(total_rows) * ffn * sizeof(__nv_bfloat16));
  auto* h = reinterpret_cast<__nv_bfloat16*>(ws);
  auto* act = reinterpret_cast<__nv_bfloat16*>(ws + h_bytes);
  void* gemm_ws = ws + h_bytes + a_bytes;
  const size_t gemm_bytes = workspace_bytes - h_bytes - a_bytes;
  const GroupedGemmProblem down{act, w2, y, offsets, num_groups, total_rows, hidden, ffn, d.sm_count};
  if (epilogue) {
    // The gate GEMM into gate [rows, ffn] (in h); the up GEMM with silu(gate) * up in its epilogue
    // into act; the down GEMM. Each w13 half is addressed with a group stride of 2 * ffn * hidden.
    const int64_t w13_stride = 2 * ffn * hidden;
    GroupedGemmProblem gate_p{x, w13, h, offsets, num_groups, total_rows, ffn, hidden, d.sm_count};
    gate_p.w_group_stride = w13_stride;
    GroupedGemmProblem up_p{x, w13 + ffn * hidden, act, offsets, num_groups, total_rows, ffn, hidden, d.sm_count};
    up_p.w_group_stride = w13_stride;
    up_p.c = h;
    run_grouped(kernel, d, gate_p, gemm_ws, gemm_bytes, stream);
    run_grouped(kernel, d, up_p, gemm_ws, gemm_bytes, stream);
  } else {
    // One gate/up GEMM into h [rows, 2 * ffn], then silu(gate) * up into act.
    run_grouped(kernel, d, GroupedGemmProblem{x, w13, h, offsets, num_groups, total_rows, 2 * ffn, hidden, d.sm_count},
                gemm_ws, gemm_bytes, stream);
    const int64_t chunks = total_rows * (ffn / 8);
    const int blocks = static_cast<int>(std::min<int64_t>((chunks + 255) / 256, int64_t{d.sm_count} * 16));
    silu_mul_kernel<<<blocks, 256, 0, stream>>>(h, act, total_rows, offsets + num_groups, ffn);
    MOEBAL_CHECK_LAUNCH();
  }
  run_grouped(kernel, d, down, gemm_ws, gemm_bytes, stream);
}

void expert_ffn_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w13, const __nv_bfloat16* w2, __nv_bfloat16* y,
                     const int32_t* offsets, int num_groups, int64_t total_rows, int64_t hidden, int64_t ffn,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  expert_ffn_bf16_with(GroupedGemmKernel::kAuto, x, w13, w2, y, offsets, num_groups, total_rows, hidden, ffn,
                       workspace, workspace_bytes, stream);
}

}  // namespace moebal::cuda
