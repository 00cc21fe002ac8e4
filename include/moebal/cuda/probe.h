// PROBE planner on the GPU: one thread block per layer, many layers per launch, no host
// synchronisation, capturable in a CUDA graph. Produces exactly the plan of the CPU reference
// moebal::core::probe_plan (moebal/core/probe.h) on the same input.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "moebal/core/probe.h"

namespace moebal::cuda {

/// Bytes of global workspace probe_plan needs for num_layers layers on the current device: per
/// layer, the move list the quota grid reads (4 (2 + 3 k_max + R k_max) bytes, rounded up to 16),
/// plus 8 * R * E bytes when a layer's state does not fit in one block's shared memory (R * E above
/// about 26K on H100). Validates cfg (throws moebal::ValueError).
size_t probe_plan_workspace_bytes(const core::ProbeConfig& cfg, int32_t num_layers);

/// Plans num_layers layers, one thread block each. `in` and `out` hold DEVICE pointers with the
/// layouts documented in moebal/core/probe.h; every output pointer except stats may be null. With a
/// dense quota a second, GPU-wide grid writes it (on sm_90 a programmatic dependent launch that
/// writes the plan-independent default split while the planner runs); without one (quota null)
/// the plan is a single kernel, the lowest latency. `workspace` (16-byte aligned, at least
/// probe_plan_workspace_bytes(cfg, num_layers) bytes) is required.
/// stats is required: the kernel cannot throw, so input values it finds invalid (negative counts,
/// phy2log ids out of range, experts without a copy, bad model times or windows) are reported as
/// kProbeBad* bits in stats[l * kProbeNumStats + kProbeStatStatus]; such a layer gets an all-zero
/// quota, no replicas and zero times. Configuration errors (shapes, S, k_max, bandwidths, pointers)
/// throw moebal::ValueError on the host before anything is enqueued.
/// Enqueued on `stream`; no host synchronisation; the first call for a given shared-memory size
/// raises the kernel's dynamic shared-memory limit (cudaFuncSetAttribute), so make one call before
/// capturing it into a CUDA graph.
void probe_plan(const core::ProbeConfig& cfg, int32_t num_layers, const core::ProbeInputs& in,
                const core::ProbeOutputs& out, void* workspace, size_t workspace_bytes,
                cudaStream_t stream);

}  // namespace moebal::cuda
