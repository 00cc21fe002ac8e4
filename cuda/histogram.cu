#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"

namespace moebal::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxSharedExperts = 8192;  // shared-memory histogram up to 32 KiB

// Block-local histogram in shared memory, flushed with one global atomic per non-zero bin.
__global__ void histogram_shared_kernel(const int32_t* __restrict__ ids, int64_t n, int32_t num_experts,
                                        int32_t* __restrict__ counts) {
  extern __shared__ int32_t bins[];
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) bins[e] = 0;
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int32_t e = ids[i];
    if (e >= 0 && e < num_experts) atomicAdd(&bins[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
    if (bins[e] != 0) atomicAdd(&counts[e], bins[e]);
}

__global__ void histogram_global_kernel(const int32_t* __restrict__ ids, int64_t n, int32_t num_experts,
                                        int32_t* __restrict__ counts) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int32_t e = ids[i];
    if (e >= 0 && e < num_experts) atomicAdd(&counts[e], 1);
  }
}

}  // namespace

void expert_histogram(const int32_t* ids, int64_t num_ids, int32_t num_experts, int32_t* counts,
                      cudaStream_t stream) {
  MOEBAL_CHECK_ARG(num_experts > 0, "expert_histogram: num_experts must be > 0, got ", num_experts);
  MOEBAL_CHECK_ARG(num_ids >= 0, "expert_histogram: num_ids must be >= 0, got ", num_ids);
  MOEBAL_CHECK_CUDA(cudaMemsetAsync(counts, 0, sizeof(int32_t) * num_experts, stream));
  if (num_ids == 0) return;
  const int64_t want = (num_ids + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(want < 1024 ? want : 1024);
  if (num_experts <= kMaxSharedExperts) {
    histogram_shared_kernel<<<blocks, kThreads, sizeof(int32_t) * num_experts, stream>>>(
        ids, num_ids, num_experts, counts);
  } else {
    histogram_global_kernel<<<blocks, kThreads, 0, stream>>>(ids, num_ids, num_experts, counts);
  }
  MOEBAL_CHECK_LAUNCH();
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace moebal::cuda
