// Per-expert token histogram on the GPU: the smallest building block the planners consume.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace moebal::cuda {

/// counts[e] = number of entries of ids[0..num_ids) equal to e, for e in [0, num_experts).
/// Negative ids (padding / dropped tokens) and ids >= num_experts are skipped; validating ids is
/// the caller's job, since doing it here would need a host synchronisation.
/// ids and counts are device pointers; counts (num_experts int32) is overwritten. Enqueued on
/// `stream`; no host synchronisation.
void expert_histogram(const int32_t* ids, int64_t num_ids, int32_t num_experts, int32_t* counts,
                      cudaStream_t stream);

/// Number of CUDA devices visible to this process (0 when there is no driver or device).
int device_count();

}  // namespace moebal::cuda
