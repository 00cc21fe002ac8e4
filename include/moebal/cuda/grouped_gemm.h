// Grouped expert GEMMs on the GPU (bf16 in, fp32 accumulate, bf16 out).
//
// Layout conventions shared by every MoE kernel in moebal:
//  - activations are row-major [rows, features]; the rows of group (expert slot) g are the
//    contiguous range [offsets[g], offsets[g+1]) of a slot-sorted buffer;
//  - offsets is a DEVICE int32 array of num_groups + 1 entries, offsets[0] == 0, non-decreasing,
//    offsets[num_groups] == total_rows; it is read on the device (no host synchronisation), so
//    empty groups cost nothing and skewed groups need no host-side planning;
//  - weights are row-major [num_groups, N, K] (K contiguous), i.e. y = x @ W[g]^T, the layout of
//    torch.nn.Linear weights and of vLLM's w13/w2.
//
// Offsets are trusted: they are never copied to the host. Out-of-range entries are clamped into
// [0, total_rows] on the device (so a bad array cannot make a kernel write outside y), but rows
// of a malformed array are then computed for the wrong group or left unwritten.
//
// Kernels: two decode kernels on any sm_80+ device that launch only active groups (found on the
// device): "gemv" (CUDA cores, each warp streams a few weight rows with 512-byte warp-wide loads)
// and "skinny" (y^T = W x^T with mma.sync, expert weights streamed from global memory straight into
// MMA fragments, split-k inside a CTA); on compute capability 9.0 with the sm_90a kernels
// compiled in, CUTLASS 3.x grouped GEMMs (TMA, warp-specialised wgmma, per-group problem shapes
// built on the device); a portable tensor-core kernel (mma.sync through WMMA, sm_80+). The choice is made per call from the current device and the host-known
// sizes (see GroupedGemmKernel, pick_grouped_gemm_kernel).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace moebal::cuda {

/// Which kernel runs a grouped GEMM. kAuto picks from the device and rows per active group.
enum class GroupedGemmKernel : int {
  kAuto = 0,
  kPortable = 1,       ///< WMMA tiled kernel, any sm_80+ device
  kHopperSmallM = 2,   ///< sm_90a, y^T = W x^T: 64 weight rows x 32 token rows per tile (decode)
  kHopperLargeM = 3,   ///< sm_90a, 128 x 256 token x weight-row tiles, cooperative (prefill)
  kHopperMediumM = 4,  ///< sm_90a, y^T = W x^T: 128 weight rows x 64 token rows per tile
  kSkinny = 5,         ///< any sm_80+, decode: y^T = W x^T, 16 weight rows x up to 32 rows per pass
  kGemv = 6,           ///< any sm_80+, decode on CUDA cores: a warp streams 2-4 weight rows, <= 8 rows per pass
  /// sm_90a, two launches: the groups of more than 64 rows on the large_m kernel, then those of at
  /// most 64 rows (MOEBAL_GEMM_SPLIT_ROWS overrides the bound) on the medium_m kernel; each group's
  /// class is read on the device. For skewed routing with many large experts (docs/gemm.md).
  kHopperSplit = 7,
};

/// Name of a kernel choice ("auto", "portable", "hopper_small_m", "hopper_medium_m",
/// "hopper_large_m", "skinny", "gemv", "hopper_split").
const char* to_string(GroupedGemmKernel kernel);

/// Whether the Hopper kernels are compiled in and `device` (compute capability 9.0) can run them.
bool hopper_grouped_gemm_available(int device);

/// The kernel kAuto resolves to on `device` for total_rows rows over num_groups groups of [n, k]
/// weights. Compute capability 9.0 with the Hopper kernels: kGemv when 2 * total_rows < num_groups
/// (about one row per active expert) and total_rows <= 8, or <= 32 with n * k <= 4 Mi (decode:
/// measured faster than every other kernel there, bench/results/gemv.md), else by rows per active group small_m <= 4 < medium_m <= 24 < large_m,
/// except kHopperSplit for 25-256 rows per group when num_groups >= 32 and n * k >= 8 Mi
/// (bench/results/split.md). Other sm_80+ devices:
/// kSkinny when total_rows <= 32 or total_rows / min(num_groups, total_rows) <= 8, else kPortable.
GroupedGemmKernel pick_grouped_gemm_kernel(int device, int num_groups, int64_t total_rows, int64_t n,
                                           int64_t k);

/// Bytes of device workspace grouped_gemm_bf16 needs for num_groups groups on the current device.
size_t grouped_gemm_workspace_bytes(int num_groups);

/// y[r, :] = x[r, :] @ w[g]^T for every row r of group g. x [total_rows, k], w [num_groups, n, k],
/// y [total_rows, n]; all device pointers, 16-byte aligned; n and k multiples of 8. Enqueued on
/// `stream` with no host synchronisation; workspace (device, >= grouped_gemm_workspace_bytes on
/// the current device) must stay untouched until the work completes. Rows of empty groups cost
/// nothing; y rows outside [offsets[0], offsets[num_groups]) are not written.
void grouped_gemm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                       const int32_t* offsets, int num_groups, int64_t total_rows, int64_t n,
                       int64_t k, void* workspace, size_t workspace_bytes, cudaStream_t stream);

/// grouped_gemm_bf16 with an explicit kernel choice (benchmarks, tests). A Hopper choice on a
/// device that cannot run it throws moebal::ValueError (so do kSkinny and kGemv below sm_80). kSkinny
/// and kGemv are correct for any group size but stream a group's weights once per 32 (skinny) or 8
/// (gemv) of its rows. The workspace of
/// grouped_gemm_workspace_bytes fits every choice. Enqueued on `stream`, no host synchronisation.
void grouped_gemm_bf16_with(GroupedGemmKernel kernel, const __nv_bfloat16* x,
                            const __nv_bfloat16* w, __nv_bfloat16* y, const int32_t* offsets,
                            int num_groups, int64_t total_rows, int64_t n, int64_t k,
                            void* workspace, size_t workspace_bytes, cudaStream_t stream);

/// Bytes of device workspace expert_ffn_bf16 needs.
size_t expert_ffn_workspace_bytes(int num_groups, int64_t total_rows, int64_t ffn);

/// Fused expert FFN per group: y = (silu(x @ W1^T) * (x @ W3^T)) @ W2^T, where
/// w13 [num_groups, 2 * ffn, hidden] stacks W1 (rows [0, ffn), the gate) over W3 (rows
/// [ffn, 2 * ffn), the up projection) and w2 is [num_groups, hidden, ffn].
/// x, y [total_rows, hidden]. All device pointers; hidden and ffn multiples of 8.
/// The kernel is chosen as for grouped_gemm_bf16 with the gate/up shape (pick_grouped_gemm_kernel
/// with n = 2 * ffn, k = hidden) and used for both GEMMs. With kSkinny or kGemv (decode):
/// two launches on `stream`, the gate/up GEMM with silu(gate) * up computed in fp32 in its epilogue
/// (rounded once to bf16 into a [total_rows, ffn] intermediate), then the down GEMM; no
/// [total_rows, 2 * ffn] buffer. With any other kernel: one gate/up GEMM into a [total_rows, 2 * ffn]
/// intermediate, a silu(gate) * up kernel, the down GEMM; with MOEBAL_FFN_SWIGLU_EPILOGUE=1 instead
/// the gate GEMM x @ W1^T into a [total_rows, ffn] bf16 intermediate and the up GEMM x @ W3^T whose
/// epilogue computes silu(gate) * up in fp32 (up unrounded) into act [total_rows, ffn], then the down
/// GEMM (measured no faster on the H100, docs/gemm.md).
/// No host synchronisation.
void expert_ffn_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w13, const __nv_bfloat16* w2,
                     __nv_bfloat16* y, const int32_t* offsets, int num_groups, int64_t total_rows,
                     int64_t hidden, int64_t ffn, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

/// expert_ffn_bf16 with an explicit kernel choice for both GEMMs (benchmarks, tests): kSkinny and
/// kGemv force the fused two-launch path on that kernel, any other choice the three-launch path.
/// Same workspace (expert_ffn_workspace_bytes) and errors as grouped_gemm_bf16_with.
void expert_ffn_bf16_with(GroupedGemmKernel kernel, const __nv_bfloat16* x, const __nv_bfloat16* w13,
                          const __nv_bfloat16* w2, __nv_bfloat16* y, const int32_t* offsets, int num_groups,
                          int64_t total_rows, int64_t hidden, int64_t ffn, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

}  // namespace moebal::cuda
