// Helpers shared by the CUDA googletest suites (tests/cpp/cuda_test_*.cu).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include <cuda_runtime_api.h>

#include "moebal/cuda/check.h"

namespace moebal_test {

/// A device array of n elements (at least one is allocated) with synchronous upload, poison and
/// download. Synchronous on purpose: cudaMemset / cudaMemcpy run on the legacy default stream,
/// which does not order against the non-blocking streams the kernels under test run on, so an
/// unfinished poison or upload could land after (or under) the kernel.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    MOEBAL_CHECK_CUDA(cudaMalloc(&ptr, sizeof(T) * std::max<size_t>(count, 1)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (n) MOEBAL_CHECK_CUDA(cudaMemcpy(ptr, host.data(), sizeof(T) * n, cudaMemcpyHostToDevice));
    MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  /// Fills every byte with 0x7b (an implausible value for ids, offsets and floats alike).
  void poison() {
    MOEBAL_CHECK_CUDA(cudaMemset(ptr, 0x7b, sizeof(T) * std::max<size_t>(n, 1)));
    MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  }
  std::vector<T> host() const {
    std::vector<T> h(n);
    if (n) MOEBAL_CHECK_CUDA(cudaMemcpy(h.data(), ptr, sizeof(T) * n, cudaMemcpyDeviceToHost));
    return h;
  }
};

}  // namespace moebal_test
