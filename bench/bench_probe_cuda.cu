// PROBE planner on the GPU: CUDA-event timings (warm-up, median of reps) of
//  - a batched launch of 58 layers (one block per layer), with and without the dense quota,
//  - the batched launch captured in a CUDA graph and replayed,
//  - a single layer (the latency an online planner pays per layer): launched from the host and
//    replayed from a CUDA graph, each with the dense quota and without any quota (what a caller
//    that takes the plan's moves, or the CPU's sparse quota, pays), and the setup alone (k_max = 0,
//    no quota: load, initial assignment, outputs),
// plus a reference check of the GPU plan against the CPU reference on the same input.
//   moebal_bench_probe_cuda [reps]   (bench_probe.cpp already owns the name moebal_bench_probe)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "moebal/core/probe.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/probe.h"
#include "probe_workload.h"

namespace {

template <class T>
T* dev_copy(const std::vector<T>& v) {
  T* d = nullptr;
  MOEBAL_CHECK_CUDA(cudaMalloc(&d, sizeof(T) * v.size()));
  MOEBAL_CHECK_CUDA(cudaMemcpy(d, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice));
  return d;
}

template <class T>
T* dev_alloc(size_t n) {
  T* d = nullptr;
  MOEBAL_CHECK_CUDA(cudaMalloc(&d, sizeof(T) * (n ? n : 1)));
  return d;
}

template <class F>
double median_us(F&& launch, cudaStream_t s, int reps) {
  cudaEvent_t a, b;
  MOEBAL_CHECK_CUDA(cudaEventCreate(&a));
  MOEBAL_CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 10; ++i) launch();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    MOEBAL_CHECK_CUDA(cudaEventRecord(a, s));
    launch();
    MOEBAL_CHECK_CUDA(cudaEventRecord(b, s));
    MOEBAL_CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    MOEBAL_CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 100;
  cudaDeviceProp prop;
  MOEBAL_CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs)\n\n", prop.name, prop.multiProcessorCount);
  std::printf("| workload | batched 58 layers, us (per layer) | same, no dense quota | CUDA graph replay, us (per layer) | "
              "single layer: launch, us | launch, no quota | graph replay | graph replay, no quota | setup only "
              "(k_max=0, no quota) | moves/layer | GPU plan == CPU plan |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  cudaStream_t s;
  MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (const auto& w : moebal_bench::probe_workloads()) {
    const size_t R = w.cfg.num_ranks, E = w.cfg.num_experts, S = w.cfg.max_extra_slots, L = w.L;
    moebal::core::ProbeInputs in{dev_copy(w.counts), dev_copy(w.phy2log), dev_copy(w.fixed_us),
                                 dev_copy(w.us_per_token), dev_copy(w.window_us)};
    moebal::core::ProbeOutputs out{dev_alloc<int32_t>(L * R * E * R), dev_alloc<int32_t>(L * R * S),
                                   dev_alloc<int32_t>(L * R * S), dev_alloc<double>(L * 2 * R),
                                   dev_alloc<int64_t>(L * 2 * R), dev_alloc<int32_t>(L * 4)};
    moebal::core::ProbeOutputs lean = out;
    lean.quota = nullptr;
    const size_t wsb = moebal::cuda::probe_plan_workspace_bytes(w.cfg, w.L);
    void* ws = wsb ? dev_alloc<unsigned char>(wsb) : nullptr;

    const double batched = median_us([&] { moebal::cuda::probe_plan(w.cfg, w.L, in, out, ws, wsb, s); }, s, reps);
    const double batched_lean = median_us([&] { moebal::cuda::probe_plan(w.cfg, w.L, in, lean, ws, wsb, s); }, s, reps);
    const double single = median_us([&] { moebal::cuda::probe_plan(w.cfg, 1, in, out, ws, wsb, s); }, s, reps);
    const double single_lean = median_us([&] { moebal::cuda::probe_plan(w.cfg, 1, in, lean, ws, wsb, s); }, s, reps);
    moebal::core::ProbeConfig setup_cfg = w.cfg;
    setup_cfg.max_iters = 0;
    const double setup = median_us([&] { moebal::cuda::probe_plan(setup_cfg, 1, in, lean, ws, wsb, s); }, s, reps);
    auto replay_us = [&](const moebal::core::ProbeOutputs& o, int layers) {
      cudaGraph_t g;
      cudaGraphExec_t ge;
      MOEBAL_CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
      moebal::cuda::probe_plan(w.cfg, layers, in, o, ws, wsb, s);
      MOEBAL_CHECK_CUDA(cudaStreamEndCapture(s, &g));
      MOEBAL_CHECK_CUDA(cudaGraphInstantiate(&ge, g, 0));
      const double t = median_us([&] { MOEBAL_CHECK_CUDA(cudaGraphLaunch(ge, s)); }, s, reps);
      MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
      cudaGraphExecDestroy(ge);
      cudaGraphDestroy(g);
      return t;
    };
    const double single_replay = replay_us(out, 1);
    const double single_replay_lean = replay_us(lean, 1);

    cudaGraph_t graph;
    cudaGraphExec_t exec;
    MOEBAL_CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    moebal::cuda::probe_plan(w.cfg, w.L, in, out, ws, wsb, s);
    MOEBAL_CHECK_CUDA(cudaStreamEndCapture(s, &graph));
    MOEBAL_CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    const double replay = median_us([&] { MOEBAL_CHECK_CUDA(cudaGraphLaunch(exec, s)); }, s, reps);
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));

    // Reference check of the (graph-replayed) plan.
    std::vector<int32_t> gq(L * R * E * R), gre(L * R * S), grs(L * R * S), gst(L * 4);
    std::vector<double> gt(L * 2 * R);
    MOEBAL_CHECK_CUDA(cudaMemcpy(gq.data(), out.quota, gq.size() * 4, cudaMemcpyDeviceToHost));
    MOEBAL_CHECK_CUDA(cudaMemcpy(gre.data(), out.replica_expert, gre.size() * 4, cudaMemcpyDeviceToHost));
    MOEBAL_CHECK_CUDA(cudaMemcpy(grs.data(), out.replica_src, grs.size() * 4, cudaMemcpyDeviceToHost));
    MOEBAL_CHECK_CUDA(cudaMemcpy(gst.data(), out.stats, gst.size() * 4, cudaMemcpyDeviceToHost));
    MOEBAL_CHECK_CUDA(cudaMemcpy(gt.data(), out.rank_time_us, gt.size() * 8, cudaMemcpyDeviceToHost));
    std::vector<int32_t> cq(gq.size()), cre(gre.size()), crs(grs.size()), cst(gst.size());
    std::vector<double> ct(gt.size());
    std::vector<int64_t> ctok(L * 2 * R);
    std::vector<unsigned char> cws(moebal::core::probe_workspace_bytes(w.cfg));
    moebal::core::probe_plan(w.cfg, w.L, w.inputs(), {cq.data(), cre.data(), crs.data(), ct.data(), ctok.data(), cst.data()},
                             cws.data(), cws.size());
    const bool same = gq == cq && gre == cre && grs == crs && gst == cst && gt == ct;

    double moves = 0;
    for (size_t l = 0; l < L; ++l) moves += gst[l * 4 + moebal::core::kProbeStatMoves];
    std::printf("| %s, %d copies/rank | %.1f (%.3f) | %.1f (%.3f) | %.1f (%.3f) | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %s |\n",
                w.name.c_str(), w.cfg.num_slots / w.cfg.num_ranks - w.cfg.num_experts / w.cfg.num_ranks, batched,
                batched / L, batched_lean, batched_lean / L, replay, replay / L, single, single_lean, single_replay,
                single_replay_lean, setup, moves / L, same ? "yes" : "NO");
    std::fflush(stdout);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    for (const void* p : {static_cast<const void*>(in.counts), static_cast<const void*>(in.phy2log),
                          static_cast<const void*>(in.fixed_us), static_cast<const void*>(in.us_per_token),
                          static_cast<const void*>(in.window_us), static_cast<const void*>(out.quota),
                          static_cast<const void*>(out.replica_expert), static_cast<const void*>(out.replica_src),
                          static_cast<const void*>(out.rank_time_us), static_cast<const void*>(out.rank_tokens),
                          static_cast<const void*>(out.stats), static_cast<const void*>(ws)})
      cudaFree(const_cast<void*>(p));
  }
  cudaStreamDestroy(s);
  return 0;
}
