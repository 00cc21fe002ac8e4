// Routing traces and load matrices: the inputs every solver, predictor and benchmark reads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moebal::core {

/// Per-layer expert load: loads[l * num_experts + e] = tokens (or any non-negative weight) routed
/// to logical expert e in MoE layer l. Same layout as DeepSeek EPLB's `weight[layers, experts]`.
struct LoadMatrix {
  int32_t num_layers = 0;
  int32_t num_experts = 0;
  std::vector<double> loads;  // [num_layers, num_experts], row-major

  LoadMatrix() = default;
  /// Validates: positive dims, loads.size() == layers*experts, every value finite and >= 0.
  LoadMatrix(int32_t num_layers, int32_t num_experts, std::vector<double> loads);

  double at(int32_t layer, int32_t expert) const { return loads[static_cast<size_t>(layer) * num_experts + expert]; }
  const double* row(int32_t layer) const { return loads.data() + static_cast<size_t>(layer) * num_experts; }
  void validate() const;
};

/// Token-level routing record of a run through an MoE model. Every token passes every MoE layer,
/// so ids are dense [num_layers, num_tokens, top_k].
struct RoutingTrace {
  int32_t num_layers = 0;
  int32_t num_tokens = 0;
  int32_t top_k = 0;
  int32_t num_experts = 0;
  std::vector<int32_t> topk_ids;     // [L, T, K]; each in [0, num_experts), distinct within a token
  std::vector<float> topk_weights;   // [L, T, K] gate weights, or empty
  std::vector<int32_t> src_rank;     // [T] data-parallel rank the token enters on, or empty (= 0)
  std::vector<int32_t> step;         // [T] non-decreasing batch/step id, or empty (= 0)

  RoutingTrace() = default;
  /// Validates everything (see validate()).
  RoutingTrace(int32_t num_layers, int32_t num_tokens, int32_t top_k, int32_t num_experts,
               std::vector<int32_t> topk_ids, std::vector<float> topk_weights = {},
               std::vector<int32_t> src_rank = {}, std::vector<int32_t> step = {});

  /// Throws moebal::ValueError naming the first bad field: sizes, id range, duplicate ids within a
  /// token, non-finite or negative weights, negative ranks, decreasing steps.
  void validate() const;

  int32_t id(int32_t layer, int32_t token, int32_t k) const {
    return topk_ids[(static_cast<size_t>(layer) * num_tokens + token) * top_k + k];
  }
  int32_t num_steps() const;  ///< max(step) + 1, or 1 without step ids
  int32_t num_ranks() const;  ///< max(src_rank) + 1, or 1 without ranks

  /// Tokens routed to each expert, per layer (a token counts once per chosen expert).
  LoadMatrix loads() const;
  /// Same, restricted to tokens with step in [step_begin, step_end).
  LoadMatrix loads(int32_t step_begin, int32_t step_end) const;
  /// Loads per step: [num_steps, num_layers, num_experts].
  std::vector<double> step_loads() const;
  /// Expert co-activation counts of one layer: c[i*E + j] = tokens that chose both i and j (i != j);
  /// the diagonal holds the expert's own load. Symmetric [E, E].
  std::vector<double> coactivation(int32_t layer) const;
  /// Per (source rank, expert) counts of one layer: [num_ranks, num_experts].
  std::vector<double> rank_expert_counts(int32_t layer) const;
};

/// Builds a LoadMatrix from per-step counts [num_steps, num_layers, num_experts] by summing steps.
LoadMatrix sum_step_loads(int32_t num_steps, int32_t num_layers, int32_t num_experts,
                          const std::vector<double>& step_loads);

}  // namespace moebal::core
