// Argument checks of the moebal::probe_plan op shared by its CPU and CUDA kernels (the fake kernel in
// moebal/probe_ops.py mirrors them). Value checks (negative counts, bad times) happen in the core
// on CPU and are reported in stats[:, 3] on CUDA.
#pragma once

#include <torch/types.h>

#include <limits>
#include <tuple>

#include "moebal/core/probe.h"

namespace moebal::pytorch {

inline moebal::core::ProbeConfig probe_check_args(const at::Tensor& counts, const at::Tensor& phy2log,
                                                  const at::Tensor& fixed_us, const at::Tensor& us_per_token,
                                                  const at::Tensor& window_us, int64_t expert_bytes,
                                                  double intra_node_GBps, double inter_node_GBps,
                                                  int64_t ranks_per_node, int64_t max_extra_slots,
                                                  int64_t max_iters, double min_gain_us) {
  TORCH_CHECK_VALUE(counts.dim() == 3, "moebal.probe_plan: counts must be [layers, ranks, experts], got ",
                    counts.sizes());
  TORCH_CHECK_VALUE(phy2log.dim() == 2, "moebal.probe_plan: phy2log must be [layers, slots], got ", phy2log.sizes());
  const int64_t L = counts.size(0), R = counts.size(1), E = counts.size(2);
  TORCH_CHECK_VALUE(counts.scalar_type() == at::kInt, "moebal.probe_plan: counts must be int32, got ",
                    counts.scalar_type());
  TORCH_CHECK_VALUE(phy2log.scalar_type() == at::kInt, "moebal.probe_plan: phy2log must be int32, got ",
                    phy2log.scalar_type());
  TORCH_CHECK_VALUE(phy2log.size(0) == L, "moebal.probe_plan: phy2log has ", phy2log.size(0),
                    " layers but counts has ", L);
  for (const auto* t : {&fixed_us, &us_per_token, &window_us})
    TORCH_CHECK_VALUE(t->scalar_type() == at::kDouble, "moebal.probe_plan: fixed_us, us_per_token and window_us must be "
                      "float64, got ", t->scalar_type());
  TORCH_CHECK_VALUE(fixed_us.dim() == 1 && fixed_us.size(0) == R, "moebal.probe_plan: fixed_us must be [", R,
                    "] (one per rank), got ", fixed_us.sizes());
  TORCH_CHECK_VALUE(us_per_token.dim() == 1 && us_per_token.size(0) == R, "moebal.probe_plan: us_per_token must be [",
                    R, "] (one per rank), got ", us_per_token.sizes());
  TORCH_CHECK_VALUE(window_us.dim() == 2 && window_us.size(0) == L && window_us.size(1) == R,
                    "moebal.probe_plan: window_us must be [", L, ", ", R, "], got ", window_us.sizes());
  for (const auto* t : {&phy2log, &fixed_us, &us_per_token, &window_us})
    TORCH_CHECK_VALUE(t->device() == counts.device(), "moebal.probe_plan: all tensors must be on one device; counts is on ",
                      counts.device(), " but another is on ", t->device());
  for (const auto* t : {&counts, &phy2log, &fixed_us, &us_per_token, &window_us})
    TORCH_CHECK_VALUE(t->is_contiguous(), "moebal.probe_plan: inputs must be contiguous");
  TORCH_CHECK_VALUE(L <= std::numeric_limits<int32_t>::max() / 2, "moebal.probe_plan: too many layers");
  auto in_int32 = [](int64_t v) { return v >= 0 && v <= std::numeric_limits<int32_t>::max(); };
  TORCH_CHECK_VALUE(in_int32(R) && in_int32(E) && in_int32(phy2log.size(1)) && in_int32(max_extra_slots) &&
                        in_int32(max_iters) && in_int32(ranks_per_node),
                    "moebal.probe_plan: sizes, max_extra_slots, max_iters and ranks_per_node must be non-negative "
                    "int32 values (got max_extra_slots=", max_extra_slots, ", max_iters=", max_iters,
                    ", ranks_per_node=", ranks_per_node, ")");
  moebal::core::ProbeConfig cfg;
  cfg.num_ranks = static_cast<int32_t>(R);
  cfg.num_experts = static_cast<int32_t>(E);
  cfg.num_slots = static_cast<int32_t>(phy2log.size(1));
  cfg.ranks_per_node = static_cast<int32_t>(ranks_per_node);
  cfg.max_extra_slots = static_cast<int32_t>(max_extra_slots);
  cfg.max_iters = static_cast<int32_t>(max_iters);
  cfg.expert_bytes = expert_bytes;
  cfg.intra_node_GBps = intra_node_GBps;
  cfg.inter_node_GBps = inter_node_GBps;
  cfg.min_gain_us = min_gain_us;
  try {
    cfg.validate();
  } catch (const moebal::ValueError& e) {
    TORCH_CHECK_VALUE(false, "moebal.probe_plan: ", e.what());
  }
  return cfg;
}

struct ProbeOpOutputs {
  at::Tensor quota, replica_expert, replica_src, rank_time_us, rank_tokens, stats;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {quota, replica_expert, replica_src, rank_time_us, rank_tokens, stats};
  }
  moebal::core::ProbeOutputs raw() const {
    return {quota.data_ptr<int32_t>(), replica_expert.data_ptr<int32_t>(), replica_src.data_ptr<int32_t>(),
            rank_time_us.data_ptr<double>(), rank_tokens.data_ptr<int64_t>(), stats.data_ptr<int32_t>()};
  }
};

inline ProbeOpOutputs probe_alloc_outputs(const moebal::core::ProbeConfig& cfg, int64_t L, const at::Tensor& like) {
  const int64_t R = cfg.num_ranks, E = cfg.num_experts, S = cfg.max_extra_slots;
  const auto i32 = like.options().dtype(at::kInt);
  return {at::empty({L, R, E, R}, i32),
          at::empty({L, R, S}, i32),
          at::empty({L, R, S}, i32),
          at::empty({L, 2, R}, like.options().dtype(at::kDouble)),
          at::empty({L, 2, R}, like.options().dtype(at::kLong)),
          at::empty({L, moebal::core::kProbeNumStats}, i32)};
}

inline moebal::core::ProbeInputs probe_raw_inputs(const at::Tensor& counts, const at::Tensor& phy2log,
                                                  const at::Tensor& fixed_us, const at::Tensor& us_per_token,
                                                  const at::Tensor& window_us) {
  return {counts.data_ptr<int32_t>(), phy2log.data_ptr<int32_t>(), fixed_us.data_ptr<double>(),
          us_per_token.data_ptr<double>(), window_us.data_ptr<double>()};
}

}  // namespace moebal::pytorch
