// Expert placement tables in DeepSeek EPLB's layout plus the slot -> GPU -> node layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moebal::core {

/// Where every logical expert of every layer lives.
///
/// Physical slots are numbered 0..num_slots-1 and laid out contiguously: slot s sits on GPU
/// s / slots_per_gpu(), GPU g on node g / gpus_per_node(). Tables (all int32, row-major):
///  - phy2log [L, S]: logical expert held by each slot;
///  - log2phy [L, E, max_copies]: the slots holding each logical expert, ascending, padded with -1;
///  - logcnt  [L, E]: number of copies of each logical expert (>= 1).
struct Placement {
  int32_t num_layers = 0;
  int32_t num_experts = 0;  // logical experts per layer
  int32_t num_slots = 0;    // physical slots per layer (>= num_experts)
  int32_t num_gpus = 0;
  int32_t num_nodes = 0;
  int32_t max_copies = 0;
  std::vector<int32_t> phy2log;
  std::vector<int32_t> log2phy;
  std::vector<int32_t> logcnt;

  Placement() = default;
  /// Builds log2phy and logcnt from phy2log and validates the result. max_copies = 0 means "the
  /// largest copy count present"; a larger value pads log2phy (as EPLB does).
  static Placement from_phy2log(int32_t num_layers, int32_t num_experts, int32_t num_slots,
                                int32_t num_gpus, int32_t num_nodes, std::vector<int32_t> phy2log,
                                int32_t max_copies = 0);
  /// One copy of each expert, experts laid out in order (expert e on GPU e / (E / G)).
  static Placement contiguous(int32_t num_layers, int32_t num_experts, int32_t num_gpus,
                              int32_t num_nodes);

  /// Throws moebal::ValueError naming the field: dims, divisibility (slots by GPUs, GPUs by nodes),
  /// ids out of range, experts without a copy, tables that disagree.
  void validate() const;

  int32_t slots_per_gpu() const { return num_slots / num_gpus; }
  int32_t gpus_per_node() const { return num_gpus / num_nodes; }
  int32_t gpu_of_slot(int32_t slot) const { return slot / slots_per_gpu(); }
  int32_t node_of_gpu(int32_t gpu) const { return gpu / gpus_per_node(); }
  int32_t expert_of(int32_t layer, int32_t slot) const {
    return phy2log[static_cast<size_t>(layer) * num_slots + slot];
  }
  int32_t copies(int32_t layer, int32_t expert) const {
    return logcnt[static_cast<size_t>(layer) * num_experts + expert];
  }
  /// i-th slot of an expert (i < copies(layer, expert)).
  int32_t slot_of(int32_t layer, int32_t expert, int32_t i) const {
    return log2phy[(static_cast<size_t>(layer) * num_experts + expert) * max_copies + i];
  }
};

/// Checks the common shape constraints of a placement request and throws moebal::ValueError on
/// violation: all counts positive, num_slots >= num_experts, num_slots % num_gpus == 0,
/// num_gpus % num_nodes == 0.
void check_layout(int32_t num_experts, int32_t num_slots, int32_t num_gpus, int32_t num_nodes);

}  // namespace moebal::core
