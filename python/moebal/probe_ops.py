"""Fake kernel and typed wrapper of ``torch.ops.moebal.probe_plan`` (the PROBE planner op).

The fake kernel mirrors the shape/dtype/device checks of bindings/torch/probe_checks.h so
``torch.compile`` and ``opcheck`` see the same errors and output shapes as the C++ kernels.
"""
from __future__ import annotations

import torch

NUM_STATS = 4  # moves, new replicas, window-blocked iterations, status


def _check(counts, phy2log, fixed_us, us_per_token, window_us, max_extra_slots, max_iters, ranks_per_node):
    torch._check_value(counts.dim() == 3, lambda: f"moebal.probe_plan: counts must be [layers, ranks, experts], got {tuple(counts.shape)}")
    torch._check_value(phy2log.dim() == 2, lambda: f"moebal.probe_plan: phy2log must be [layers, slots], got {tuple(phy2log.shape)}")
    L, R, _ = counts.shape
    torch._check_value(counts.dtype == torch.int32, lambda: f"moebal.probe_plan: counts must be int32, got {counts.dtype}")
    torch._check_value(phy2log.dtype == torch.int32, lambda: f"moebal.probe_plan: phy2log must be int32, got {phy2log.dtype}")
    torch._check_value(phy2log.shape[0] == L, lambda: f"moebal.probe_plan: phy2log has {phy2log.shape[0]} layers but counts has {L}")
    for t in (fixed_us, us_per_token, window_us):
        torch._check_value(t.dtype == torch.float64, lambda: f"moebal.probe_plan: fixed_us, us_per_token and window_us must be float64, got {t.dtype}")
    torch._check_value(fixed_us.dim() == 1 and fixed_us.shape[0] == R, lambda: f"moebal.probe_plan: fixed_us must be [{R}] (one per rank), got {tuple(fixed_us.shape)}")
    torch._check_value(us_per_token.dim() == 1 and us_per_token.shape[0] == R, lambda: f"moebal.probe_plan: us_per_token must be [{R}] (one per rank), got {tuple(us_per_token.shape)}")
    torch._check_value(window_us.dim() == 2 and tuple(window_us.shape) == (L, R), lambda: f"moebal.probe_plan: window_us must be [{L}, {R}], got {tuple(window_us.shape)}")
    for t in (phy2log, fixed_us, us_per_token, window_us):
        torch._check_value(t.device == counts.device, lambda: f"moebal.probe_plan: all tensors must be on one device; counts is on {counts.device} but another is on {t.device}")
    torch._check_value(max_extra_slots >= 0 and max_iters >= 0 and ranks_per_node >= 0,
                       lambda: f"moebal.probe_plan: max_extra_slots ({max_extra_slots}), max_iters ({max_iters}) and ranks_per_node ({ranks_per_node}) must be >= 0")


def register_fakes() -> None:
    @torch.library.register_fake("moebal::probe_plan")
    def _(counts, phy2log, fixed_us, us_per_token, window_us, expert_bytes, intra_node_GBps, inter_node_GBps,
          ranks_per_node, max_extra_slots, max_iters, min_gain_us):
        _check(counts, phy2log, fixed_us, us_per_token, window_us, max_extra_slots, max_iters, ranks_per_node)
        L, R, E = counts.shape
        S = max_extra_slots
        return (counts.new_empty((L, R, E, R)), counts.new_empty((L, R, S)), counts.new_empty((L, R, S)),
                counts.new_empty((L, 2, R), dtype=torch.float64), counts.new_empty((L, 2, R), dtype=torch.int64),
                counts.new_empty((L, NUM_STATS)))


def probe_plan(counts: torch.Tensor, phy2log: torch.Tensor, fixed_us: torch.Tensor, us_per_token: torch.Tensor,
               window_us: torch.Tensor, *, expert_bytes: int, intra_node_GBps: float = 450.0,
               inter_node_GBps: float = 50.0, ranks_per_node: int = 0, max_extra_slots: int = 3,
               max_iters: int = 16, min_gain_us: float = 0.0):
    """``torch.ops.moebal.probe_plan``: plan a batch of layers (see moebal.probe for the meaning).

    Returns ``(quota [L,R,E,R] int32, replica_expert [L,R,S] int32, replica_src [L,R,S] int32,
    rank_time_us [L,2,R] float64, rank_tokens [L,2,R] int64, stats [L,4] int32)``. On CUDA, bad
    input values do not raise (no host sync); they set bits in ``stats[:, 3]``.
    """
    from moebal import ops

    ops.load_library()
    return torch.ops.moebal.probe_plan(counts, phy2log, fixed_us, us_per_token, window_us, int(expert_bytes),
                                       float(intra_node_GBps), float(inter_node_GBps), int(ranks_per_node),
                                       int(max_extra_slots), int(max_iters), float(min_gain_us))
