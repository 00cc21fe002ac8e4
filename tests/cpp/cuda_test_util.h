// Helpers shared by the CUDA googletest suites (tests/cpp/cuda_test_*.cu).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
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

/// fn() captured on stream `s` into an instantiated CUDA graph; launch() replays it on a stream.
/// In the default global capture mode a host synchronisation (or any other call that is not
/// allowed during capture, from any thread) inside fn fails the capture, so a test built on this
/// also proves that fn never waits on the host.
class CapturedGraph {
 public:
  template <class Fn>
  CapturedGraph(cudaStream_t s, Fn&& fn, cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal) {
    MOEBAL_CHECK_CUDA(cudaStreamBeginCapture(s, mode));
    fn();
    MOEBAL_CHECK_CUDA(cudaStreamEndCapture(s, &graph_));
    MOEBAL_CHECK_CUDA(cudaGraphInstantiate(&exec_, graph_, 0));
  }
  ~CapturedGraph() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  void launch(cudaStream_t s) const { MOEBAL_CHECK_CUDA(cudaGraphLaunch(exec_, s)); }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

/// dispatch_layout's documented semantics on the host: pair i = (token i / K, expert ids[i]) goes
/// to copy (token mod logcnt[e]) of expert e, slot log2phy[e * max_copies + copy] (slot e when
/// log2phy is null); ids outside [0, E), copy counts outside [1, max_copies] and slots outside
/// [0, S) drop the pair (slot -1, rows after every valid row); rows are stably sorted by slot.
struct HostLayout {
  std::vector<int32_t> slot, offsets, row, token;
};

inline HostLayout layout_ref(const std::vector<int32_t>& ids, int64_t T, int K, int E, int S,
                             const std::vector<int32_t>* log2phy, const std::vector<int32_t>* logcnt,
                             int max_copies) {
  const int64_t N = T * K;
  HostLayout L;
  L.slot.assign(N, -1);
  std::vector<int64_t> cur(S + 2, 0);
  for (int64_t i = 0; i < N; ++i) {
    const int e = ids[i];
    int s = -1;
    if (e >= 0 && e < E) {
      s = e;
      if (log2phy != nullptr) {
        const int cnt = (*logcnt)[e];
        s = (cnt <= 0 || cnt > max_copies) ? -1 : (*log2phy)[e * max_copies + (i / K) % cnt];
      }
      if (s < 0 || s >= S) s = -1;
    }
    L.slot[i] = s;
    ++cur[(s < 0 ? S : s) + 1];
  }
  for (int s = 0; s <= S; ++s) cur[s + 1] += cur[s];
  L.offsets.assign(cur.begin(), cur.begin() + S + 1);
  L.row.assign(N, -1);
  L.token.assign(N, -1);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = cur[L.slot[i] < 0 ? S : L.slot[i]]++;
    L.row[i] = static_cast<int32_t>(r);
    L.token[r] = static_cast<int32_t>(i / K);
  }
  return L;
}

}  // namespace moebal_test
