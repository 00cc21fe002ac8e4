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
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace moebal::cuda {

/// Bytes of device workspace grouped_gemm_bf16 needs for num_groups groups.
size_t grouped_gemm_workspace_bytes(int num_groups);

/// y[r, :] = x[r, :] @ w[g]^T for every row r of group g. x [total_rows, k], w [num_groups, n, k],
/// y [total_rows, n]; all device pointers, 16-byte aligned; n and k multiples of 8.
void grouped_gemm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                       const int32_t* offsets, int num_groups, int64_t total_rows, int64_t n,
                       int64_t k, void* workspace, size_t workspace_bytes, cudaStream_t stream);

/// Bytes of device workspace expert_ffn_bf16 needs.
size_t expert_ffn_workspace_bytes(int num_groups, int64_t total_rows, int64_t ffn);

/// Fused expert FFN per group: y = (silu(x @ W1^T) * (x @ W3^T)) @ W2^T, where
/// w13 [num_groups, 2 * ffn, hidden] stacks W1 (rows [0, ffn), the gate) over W3 (rows
/// [ffn, 2 * ffn), the up projection) and w2 is [num_groups, hidden, ffn].
/// x, y [total_rows, hidden]. All device pointers; hidden and ffn multiples of 8.
void expert_ffn_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w13, const __nv_bfloat16* w2,
                     __nv_bfloat16* y, const int32_t* offsets, int num_groups, int64_t total_rows,
                     int64_t hidden, int64_t ffn, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

}  // namespace moebal::cuda
