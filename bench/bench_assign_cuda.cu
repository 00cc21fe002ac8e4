// GPU timing of moebal::cuda::assign_replicas, checked bit-for-bit against the CPU reference.
// Usage: moebal_bench_assign_cuda [tokens=8192] [top_k=8] [iters=200]. For each policy: median and
// min of per-launch CUDA-event times (stream launches), and the mean per replay of a CUDA graph
// holding `iters` launches (launch overhead amortised). L2 is warm (the inputs are a few hundred KB).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "assign_bench_case.h"
#include "moebal/cuda/assign.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"

using namespace moebal;

template <class T>
T* upload(const std::vector<T>& v) {
  T* d = nullptr;
  MOEBAL_CHECK_CUDA(cudaMalloc(&d, sizeof(T) * std::max<size_t>(1, v.size())));
  MOEBAL_CHECK_CUDA(cudaMemcpy(d, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice));
  return d;
}

int main(int argc, char** argv) {
  if (cuda::device_count() == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 8192;
  const int32_t K = argc > 2 ? std::atoi(argv[2]) : 8;
  const int iters = argc > 3 ? std::atoi(argv[3]) : 200;
  const bench::AssignBenchCase c = bench::make_assign_case(T, K);
  cudaDeviceProp prop;
  MOEBAL_CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s; %lld tokens x top-%d, %d experts, %d slots, %d GPUs x %d nodes\n\n", prop.name,
              static_cast<long long>(T), K, c.placement.num_experts, c.placement.num_slots, c.placement.num_gpus,
              c.placement.num_nodes);
  int32_t *ids = upload(c.ids), *src = upload(c.src), *l2p = upload(c.placement.log2phy),
          *cnt = upload(c.placement.logcnt), *quota = upload(c.quota), *w = upload(c.weights);
  int32_t* out = upload(std::vector<int32_t>(c.ids.size(), 0));
  core::ReplicaTable table = core::replica_table(c.placement, 0);
  table.log2phy = l2p;
  table.logcnt = cnt;
  cudaStream_t s;
  MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  MOEBAL_CHECK_CUDA(cudaEventCreate(&e0));
  MOEBAL_CHECK_CUDA(cudaEventCreate(&e1));
  std::printf("| policy | refcheck | median us (stream) | min us (stream) | us per launch (graph of %d) | workspace KiB |\n",
              iters);
  std::printf("|---|---|---|---|---|---|\n");
  int failures = 0;
  for (auto p : {core::AssignPolicy::kRoundRobin, core::AssignPolicy::kHash, core::AssignPolicy::kLocality,
                 core::AssignPolicy::kQuota, core::AssignPolicy::kWeightedLocality}) {
    const size_t ws_bytes = cuda::assign_replicas_workspace_bytes(T, K, table.num_experts, table.num_gpus, table.num_nodes, p);
    void* ws = nullptr;
    if (ws_bytes) MOEBAL_CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    auto launch = [&] { cuda::assign_replicas(ids, src, T, K, table, p, quota, w, out, ws, ws_bytes, s); };
    launch();
    std::vector<int32_t> got(c.ids.size()), want(c.ids.size());
    MOEBAL_CHECK_CUDA(cudaMemcpyAsync(got.data(), out, sizeof(int32_t) * got.size(), cudaMemcpyDeviceToHost, s));
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
    core::assign_replicas(c.ids.data(), c.src.data(), T, K, core::replica_table(c.placement, 0), p, c.quota.data(),
                          c.weights.data(), want.data());
    const bool ok = got == want;
    failures += !ok;
    for (int i = 0; i < 20; ++i) launch();
    std::vector<float> ms(iters);
    for (int i = 0; i < iters; ++i) {
      MOEBAL_CHECK_CUDA(cudaEventRecord(e0, s));
      launch();
      MOEBAL_CHECK_CUDA(cudaEventRecord(e1, s));
      MOEBAL_CHECK_CUDA(cudaEventSynchronize(e1));
      MOEBAL_CHECK_CUDA(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    std::sort(ms.begin(), ms.end());
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    MOEBAL_CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < iters; ++i) launch();
    MOEBAL_CHECK_CUDA(cudaStreamEndCapture(s, &graph));
    MOEBAL_CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    MOEBAL_CHECK_CUDA(cudaGraphLaunch(exec, s));  // warm-up
    float graph_ms = 0;
    MOEBAL_CHECK_CUDA(cudaEventRecord(e0, s));
    MOEBAL_CHECK_CUDA(cudaGraphLaunch(exec, s));
    MOEBAL_CHECK_CUDA(cudaEventRecord(e1, s));
    MOEBAL_CHECK_CUDA(cudaEventSynchronize(e1));
    MOEBAL_CHECK_CUDA(cudaEventElapsedTime(&graph_ms, e0, e1));
    std::printf("| %s | %s | %.1f | %.1f | %.1f | %.0f |\n", core::assign_policy_name(p), ok ? "exact" : "MISMATCH",
                1e3 * ms[ms.size() / 2], 1e3 * ms.front(), 1e3 * graph_ms / iters, ws_bytes / 1024.0);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaFree(ws);
  }
  for (int32_t* p : {ids, src, l2p, cnt, quota, w, out}) cudaFree(p);
  return failures ? 1 : 0;
}
