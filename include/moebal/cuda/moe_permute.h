// Permute token rows into the slot-sorted buffer and combine the expert outputs back, on the GPU.
// Both kernels are token-major: every token row is read once (permute) or written once
// (combine), so device-memory traffic is the minimum, T*H reads + T*k*H writes (or the reverse).
// bf16 rows, 16-byte vector accesses when hidden_size % 8 == 0 and the pointers are 16-byte
// aligned (a 2-byte path otherwise). Deterministic: no atomics on outputs.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace moebal::cuda {

/// out[row_index[t, j], :] = hidden[t, :] for every token t < num_tokens and j < top_k.
/// hidden [num_tokens, hidden_size], out [num_tokens * top_k, hidden_size], row_index int32
/// [num_tokens, top_k] (from dispatch_layout: a permutation of the rows). Entries outside
/// [0, *num_valid_rows) are skipped: pass offsets + num_slots from dispatch_layout, and the rows of
/// dropped (padding) pairs are not written, which saves their bytes when many ids are padding;
/// num_valid_rows == nullptr writes every row in [0, num_tokens * top_k). Device pointers;
/// enqueued on `stream`; no host sync.
void permute_rows_bf16(const __nv_bfloat16* hidden, int64_t num_tokens, int64_t hidden_size,
                       const int32_t* row_index, int32_t top_k, const int32_t* num_valid_rows,
                       __nv_bfloat16* out, cudaStream_t stream);

/// out[t, :] = bf16(sum over j = 0, 1, ..., top_k - 1 of weights[t, j] * y[row_index[t, j], :]),
/// accumulated in fp32 in that fixed order. Pairs whose row is >= *num_valid_rows are skipped
/// (dropped pairs: pass offsets + num_slots from dispatch_layout); num_valid_rows == nullptr means
/// all num_tokens * top_k rows are valid. y [num_tokens * top_k, hidden_size], weights fp32
/// [num_tokens, top_k], out [num_tokens, hidden_size]. Every row of `out` is written (zeros for a
/// token with no valid pair). Device pointers; enqueued on `stream`; no host sync.
void unpermute_combine_bf16(const __nv_bfloat16* y, const int32_t* row_index, const float* weights,
                            const int32_t* num_valid_rows, int64_t num_tokens, int64_t hidden_size,
                            int32_t top_k, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace moebal::cuda
