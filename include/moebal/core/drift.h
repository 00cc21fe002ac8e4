// ViBE-style drift monitoring and bounded recalibration: detect when the loads a placement was
// planned for, or the per-GPU performance models, no longer describe reality, and repair the
// placement with a short list of slot moves (each with the bytes it transfers) instead of a full
// re-placement.
#pragma once

#include <cstdint>
#include <vector>

#include "moebal/core/placement.h"
#include "moebal/core/topology.h"
#include "moebal/core/trace.h"

namespace moebal::core {

struct DriftThresholds {
  double cosine = 0.02;    // 1 - cos(planned, recent) of a layer's load vector above this = drift
  double l1 = 0.15;        // total variation 0.5*sum|p - q| of the normalised loads above this = drift
  double residual = 0.05;  // |measured - predicted| / predicted of a GPU above this = perf drift
  void validate() const;
};

struct DriftReport {
  std::vector<double> cosine_distance;  // [L]
  std::vector<double> l1_distance;      // [L] total variation distance in [0, 1]
  std::vector<double> residual;         // [G] (measured - predicted) / predicted, empty if not given
  std::vector<int32_t> drifted_layers;  // layers over either load threshold
  bool load_drift = false;
  bool perf_drift = false;
  bool triggered() const { return load_drift || perf_drift; }
};

/// Compares planned and recent loads (same shape) layer by layer and, when measured_us is not empty,
/// measured against predicted per-GPU times (both [G], predicted > 0). Throws moebal::ValueError on
/// mismatched shapes or non-finite/negative times. A layer with zero total load on either side has
/// distance 0 to an all-zero layer and 1 otherwise.
DriftReport detect_drift(const LoadMatrix& planned, const LoadMatrix& recent,
                         const DriftThresholds& thresholds = {},
                         const std::vector<double>& measured_us = {},
                         const std::vector<double>& predicted_us = {});

/// Per-GPU performance models corrected by measurement: model g scaled by measured_us[g] /
/// predicted_us[g] (the refresh ViBE performs when the residuals drift). Ratios must be finite > 0.
std::vector<PerfModel> rescale_models(const std::vector<PerfModel>& models,
                                      const std::vector<double>& measured_us,
                                      const std::vector<double>& predicted_us);

struct RecalibrationBudget {
  int32_t max_moves = 16;       // slot moves over all layers
  int64_t max_bytes = -1;       // bytes over all moves; < 0 = unlimited
  double min_gain_us = 0.0;     // a move must cut its layer's predicted time by more than this
  void validate() const;
};

/// One slot move. kind Swap: slots a and b (on different GPUs) exchange experts; 2 copies move.
/// kind Retarget: slot a stops holding expert_a (which keeps >= 1 other copy) and receives a copy of
/// expert_b; 1 copy moves (slot_b = -1).
struct SlotMove {
  enum Kind : int32_t { Swap = 0, Retarget = 1 };
  int32_t kind = Swap;
  int32_t layer = 0;
  int32_t slot_a = 0;
  int32_t slot_b = -1;
  int32_t expert_a = 0;  // expert in slot_a before the move
  int32_t expert_b = 0;  // expert in slot_b before (Swap) / expert copied into slot_a (Retarget)
  int64_t bytes = 0;
  double layer_us_before = 0;
  double layer_us_after = 0;
};

struct Recalibration {
  Placement placement;             // the repaired placement (log2phy ascending)
  std::vector<SlotMove> moves;     // in the order applied
  int64_t bytes = 0;               // sum of move bytes
  std::vector<double> step_us_before;  // [L]
  std::vector<double> step_us_after;   // [L]
};

/// Greedy best-improvement repair of `current` under `loads` and per-GPU `models`: each round takes,
/// over the allowed layers, the move (swap or retarget involving the layer's slowest GPU) with the
/// largest cut of that layer's predicted time, until the budget is spent or no move gains more than
/// min_gain_us. Moves never put two copies of an expert on one GPU. layers: which layers may change
/// (empty = all). Copy bytes = shape.weight_bytes().
Recalibration recalibrate(const Placement& current, const LoadMatrix& loads,
                          const std::vector<PerfModel>& models, const ExpertShape& shape,
                          const RecalibrationBudget& budget = {},
                          const std::vector<int32_t>& layers = {});

/// Bytes a switch from placement a to placement b moves when every slot whose expert changes
/// receives a fresh copy: (#slots with a different expert) * shape.weight_bytes().
int64_t replacement_bytes(const Placement& a, const Placement& b, const ExpertShape& shape);

}  // namespace moebal::core
