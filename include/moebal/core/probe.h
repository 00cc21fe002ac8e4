// PROBE balance planner: online, per step and per layer, greedy bottleneck-to-helper replication
// with water-filling token quotas, locality first, under a per-rank slot cap and a hiding-window
// transfer budget (seed-papers.md section 1.4, Algorithm 1). This is the CPU reference; the CUDA
// kernel in moebal/cuda/probe.h produces the identical plan (bit for bit) on the same input.
//
// Every quantity the algorithm compares is an integer: token counts are int32/int64 and times are
// int64 picoseconds (inputs in microseconds are rounded once, half to even). There is no floating
// point summation, so the CPU and the GPU take the same decisions in the same order.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moebal::core {

/// Hard limits shared by the CPU reference and the CUDA kernel.
constexpr int32_t kProbeMaxRanks = 64;         // rank sets are 64-bit masks
constexpr int32_t kProbeMaxExperts = 1 << 16;  // expert ids are packed into 24 bits of a sort key
constexpr int32_t kProbeMaxExtraSlots = 32;
constexpr int32_t kProbeMaxIters = 1024;

/// Largest accepted per-expert fixed time (1 s) and per-token time (1 ms), and finite window (1e9 us);
/// the bounds keep every int64 picosecond sum far from overflow.
constexpr double kProbeMaxFixedUs = 1e6;
constexpr double kProbeMaxUsPerToken = 1e3;
constexpr double kProbeMaxWindowUs = 1e9;

/// Layout of the per-layer stats row (int32 [kProbeNumStats]).
enum ProbeStat : int32_t {
  kProbeStatMoves = 0,          ///< accepted moves (iterations that changed the plan)
  kProbeStatNewReplicas = 1,    ///< replicas created (<= moves)
  kProbeStatWindowBlocked = 2,  ///< iterations whose best move was rejected by the hiding window
  kProbeStatStatus = 3,         ///< 0, or kProbeBad* bits (CUDA only; the CPU throws instead)
  kProbeNumStats = 4,
};

/// Input-error bits the CUDA kernel reports in stats[kProbeStatStatus] (it cannot throw).
enum ProbeStatus : int32_t {
  kProbeBadCounts = 1,     ///< a negative count, or a layer total above INT32_MAX
  kProbeBadPlacement = 2,  ///< an expert id out of range in phy2log, or an expert without a copy
  kProbeBadModel = 4,      ///< a per-rank fixed/per-token time that is non-finite, < 0 or too large
  kProbeBadWindow = 8,     ///< a window that is NaN, < 0, or finite and too large
};

/// Shape and parameters of a planning problem; identical for every layer of a batch.
struct ProbeConfig {
  int32_t num_ranks = 0;        ///< R: expert-parallel ranks (GPUs), 1..kProbeMaxRanks
  int32_t num_experts = 0;      ///< E: logical experts per layer
  int32_t num_slots = 0;        ///< static slots per layer (phy2log width), a multiple of R, >= E
  int32_t ranks_per_node = 0;   ///< ranks per node; 0 means all ranks share one node
  int32_t max_extra_slots = 3;  ///< S: replicas one rank may receive per layer
  int32_t max_iters = 16;       ///< k_max: planner iterations per layer
  int64_t expert_bytes = 0;     ///< bytes of one expert's weights (what a replica transfer moves)
  double intra_node_GBps = 450.0;  ///< rank-to-rank bandwidth within a node (1e9 bytes/s)
  double inter_node_GBps = 50.0;   ///< rank-to-rank bandwidth across nodes
  double min_gain_us = 0.0;        ///< a move must cut the bottleneck's time by more than this

  /// Throws moebal::ValueError naming the field on any violation.
  void validate() const;
  int32_t nodes_ranks() const { return ranks_per_node == 0 ? num_ranks : ranks_per_node; }
};

/// Inputs of a batch of num_layers layers (all host pointers, row-major, int32 unless noted).
struct ProbeInputs {
  const int32_t* counts = nullptr;      ///< [L, R, E] predicted tokens from source rank r to expert e
  const int32_t* phy2log = nullptr;     ///< [L, num_slots] static placement; slot s is on rank s / (num_slots / R)
  const double* fixed_us = nullptr;     ///< [R] per-expert fixed time of each rank (t(n) = a + b n, t(0) = 0)
  const double* us_per_token = nullptr; ///< [R] per-token time of each rank
  const double* window_us = nullptr;    ///< [L, R] hiding window of each rank (+inf = unlimited)
};

/// One entry of the sparse quota: tokens of (src, expert) sent to rank dst.
enum ProbeQuotaField : int32_t {
  kProbeQuotaSrc = 0,
  kProbeQuotaExpert = 1,
  kProbeQuotaDst = 2,
  kProbeQuotaTokens = 3,
  kProbeQuotaFields = 4,
};

/// Outputs of a batch; every pointer may be null (that output is skipped).
///
/// Sparse quota (CPU only; the CUDA planner rejects these two pointers): the dense quota equals the
/// locality-first default split (probe_default_quota) in every (src, expert) row except the rows a
/// planned move touched; for each touched row, quota_entries lists the row's complete set of
/// non-zero entries (src, expert, dst, tokens), tokens > 0. Entries are sorted by (expert, src, dst);
/// layer l's entries start at quota_entries + l * probe_max_quota_entries(cfg) * kProbeQuotaFields
/// and num_quota_entries[l] of them are written. At most (R - 1) * k_max rows are touched, so the
/// list stays small where the dense form is R x E x R (1 MiB per layer at R = 32, E = 256).
/// probe_quota_to_dense() rebuilds the dense quota from it.
struct ProbeOutputs {
  int32_t* quota = nullptr;           ///< [L, R, E, R] quota[src, e, dst]; sums over dst equal counts
  int32_t* replica_expert = nullptr;  ///< [L, R, S] expert received into each extra slot, -1 = unused
  int32_t* replica_src = nullptr;     ///< [L, R, S] rank the replica's weights come from, -1 = unused
  double* rank_time_us = nullptr;     ///< [L, 2, R] predicted compute time before / after the plan
  int64_t* rank_tokens = nullptr;     ///< [L, 2, R] tokens processed per rank before / after
  int32_t* stats = nullptr;           ///< [L, kProbeNumStats]
  int32_t* quota_entries = nullptr;   ///< [L, probe_max_quota_entries(cfg), kProbeQuotaFields], see above
  int32_t* num_quota_entries = nullptr;  ///< [L] entries written per layer; non-null turns the sparse quota on
                                         ///< (quota_entries is then required unless the capacity is 0)
};

/// Workspace bytes probe_plan needs (independent of the number of layers).
size_t probe_workspace_bytes(const ProbeConfig& cfg);

/// Plans num_layers layers one after another with the caller's workspace (no allocation).
/// Throws moebal::ValueError on bad configuration or input values (negative counts, phy2log ids out
/// of range, experts without a copy, non-finite or out-of-range times, NaN/negative windows).
void probe_plan(const ProbeConfig& cfg, int32_t num_layers, const ProbeInputs& in,
                const ProbeOutputs& out, void* workspace, size_t workspace_bytes);

/// Capacity of one layer's sparse quota list (entries, not bytes): enough for any input of this
/// configuration. Touched rows <= (R - 1) k_max, and a touched row's non-zero destinations are its
/// default split's (<= the expert's static copies) plus one per move that took tokens from it.
size_t probe_max_quota_entries(const ProbeConfig& cfg);

/// Locality-first default quota of one (src, expert) row, the quota of every row no move touched:
/// row[r] = tokens sent to rank r (all R entries written) for `tokens` tokens of an expert whose
/// static holders are the ranks in `holders` (bit r = rank r holds it; must be non-zero).
void probe_default_quota(const ProbeConfig& cfg, int32_t src, uint64_t holders, int32_t tokens, int32_t* row);

/// Rebuilds the dense quota [L, R, E, R] from a sparse one and the planner's inputs counts [L, R, E]
/// and phy2log [L, num_slots] (of cfg only R, E, num_slots and ranks_per_node matter). Layer l's
/// num_quota_entries[l] entries start at quota_entries + l * entries_per_layer * kProbeQuotaFields;
/// probe_plan's output has entries_per_layer = probe_max_quota_entries(cfg).
/// Throws moebal::ValueError on bad inputs or on a sparse list that is out of range, unsorted,
/// has duplicate or non-positive entries, or rows whose sum differs from the count. Rows it does
/// not list get the default split, so any list of complete rows sorted by (expert, src, dst) works.
void probe_quota_to_dense(const ProbeConfig& cfg, int32_t num_layers, const int32_t* counts, const int32_t* phy2log,
                          const int32_t* quota_entries, const int32_t* num_quota_entries, size_t entries_per_layer,
                          int32_t* quota);

/// Microseconds to picoseconds, rounded half to even (+inf maps to an "unlimited" sentinel).
int64_t probe_us_to_ps(double us);
/// Picoseconds for one expert's weights over a link of `GBps`, rounded; capped far below overflow.
int64_t probe_transfer_ps(int64_t bytes, double GBps);

}  // namespace moebal::core
