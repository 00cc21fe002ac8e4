// Cluster topology, per-GPU performance models and expert shapes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moebal::core {

/// Size and data type of one expert FFN (gate, up and down projections).
struct ExpertShape {
  int64_t hidden = 0;
  int64_t ffn = 0;
  int32_t dtype_bytes = 2;

  ExpertShape() = default;
  ExpertShape(int64_t hidden, int64_t ffn, int32_t dtype_bytes);  // validates
  void validate() const;
  /// Bytes of the three weight matrices (w1, w3: hidden x ffn; w2: ffn x hidden).
  int64_t weight_bytes() const { return 3 * hidden * ffn * dtype_bytes; }
  /// Bytes of one token's activation row (what all-to-all moves per (token, expert) pair).
  int64_t token_bytes() const { return hidden * dtype_bytes; }
  /// Floating-point operations for n tokens (2 per multiply-add, three GEMMs).
  double flops(double tokens) const { return 6.0 * static_cast<double>(hidden) * ffn * tokens; }
};

/// Time (microseconds) one GPU spends running one expert on n tokens: a continuous piecewise-linear
/// function through knots (tokens[i], micros[i]), extended linearly past the last knot with the last
/// segment's slope, and flat below the first knot. Knots strictly increase in tokens.
class PerfModel {
 public:
  PerfModel() = default;
  /// Validates: >= 2 knots (or 1 knot meaning a constant), strictly increasing, finite, >= 0.
  PerfModel(std::vector<double> tokens, std::vector<double> micros);
  /// t(n) = fixed_us + us_per_token * n for n > 0, and t(0) = 0.
  static PerfModel linear(double fixed_us, double us_per_token);
  /// Least-squares continuous piecewise-linear fit to measurements (n_i, t_i) with knots at
  /// quantiles of the distinct token counts (at most num_knots). Needs >= 2 distinct n.
  static PerfModel fit(const std::vector<double>& tokens, const std::vector<double>& micros,
                       int32_t num_knots = 8);

  /// Predicted time for n tokens; 0 for n <= 0 (an expert with no tokens costs nothing).
  double time_us(double tokens) const;
  /// The same model with every time multiplied by factor (> 0): a GPU that is factor x slower.
  PerfModel scaled(double factor) const;

  const std::vector<double>& knot_tokens() const { return tokens_; }
  const std::vector<double>& knot_micros() const { return micros_; }

 private:
  std::vector<double> tokens_;
  std::vector<double> micros_;
};

/// Nodes x GPUs and the links between them. Bandwidths are per GPU, in GB/s (1e9 bytes/s).
struct Topology {
  int32_t num_nodes = 1;
  int32_t gpus_per_node = 1;
  double nvlink_GBps = 450.0;   // GPU <-> GPU within a node (H100 NVLink4, one direction)
  double network_GBps = 50.0;   // GPU <-> GPU across nodes (400 Gb/s NIC per GPU)
  double pcie_GBps = 55.0;      // host <-> GPU (pinned memory, measured on the H100 here)
  std::vector<PerfModel> gpu_models;  // empty, or one per GPU

  Topology() = default;
  Topology(int32_t num_nodes, int32_t gpus_per_node, double nvlink_GBps = 450.0,
           double network_GBps = 50.0, double pcie_GBps = 55.0,
           std::vector<PerfModel> gpu_models = {});  // validates
  void validate() const;

  int32_t num_gpus() const { return num_nodes * gpus_per_node; }
  int32_t node_of(int32_t gpu) const { return gpu / gpus_per_node; }
  /// Bandwidth between two GPUs in GB/s: infinite for the same GPU, NVLink within a node,
  /// network across nodes.
  double bandwidth_GBps(int32_t gpu_a, int32_t gpu_b) const;
  /// Microseconds to move `bytes` from gpu_a to gpu_b (0 on the same GPU).
  double transfer_us(double bytes, int32_t gpu_a, int32_t gpu_b) const;
};

}  // namespace moebal::core
