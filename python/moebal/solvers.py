"""Placement policies ``eplb``, ``balanced`` and ``vibe`` (C++ core), registered in
:mod:`moebal.policies`, plus the H100-like expert time models the benchmarks use.

- ``eplb``: DeepSeek's EPLB (see :mod:`moebal.eplb` for the drop-in ``rebalance_experts``).
- ``balanced``: same budget and constraints as eplb, stronger copy counts / packing / swap search;
  per layer never worse than eplb.
- ``vibe``: ViBE-style speed-aware placement; needs ``topology`` with one PerfModel per GPU.

Drift monitoring and bounded recalibration: :func:`moebal._core.detect_drift`,
:func:`moebal._core.recalibrate` (re-exported here).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from moebal import _core
from moebal.policies import register_policy

DriftThresholds = _core.DriftThresholds
RecalibrationBudget = _core.RecalibrationBudget
detect_drift = _core.detect_drift
recalibrate = _core.recalibrate
rescale_models = _core.rescale_models
replacement_bytes = _core.replacement_bytes

# H100 SXM constants measured on the project's device (shared/reference/kernel-anchors.md, 1.1):
# HBM3 3.01 TB/s (device-to-device copy), dense bf16 790 TFLOP/s (8192^3 torch.mm). Grouped expert
# GEMMs reach ~0.85 of the bandwidth floor for large experts and ~0.8 of the compute peak in
# prefill (kernel-anchors 2.2), so those efficiencies are applied.
H100_HBM_BYTES_PER_S = 3.01e12
H100_BF16_FLOPS = 790e12
H100_BW_EFFICIENCY = 0.85
H100_FLOP_EFFICIENCY = 0.80


def h100_roofline(shape: _core.ExpertShape) -> tuple[float, float]:
    """(read_us, us_per_token) of one expert copy on an H100 at slowdown 1: the weight-read time
    and the compute time per token (see :func:`h100_expert_model`)."""
    read_us = shape.weight_bytes / (H100_HBM_BYTES_PER_S * H100_BW_EFFICIENCY) * 1e6
    us_per_token = shape.flops(1.0) / (H100_BF16_FLOPS * H100_FLOP_EFFICIENCY) * 1e6
    return read_us, us_per_token


def h100_expert_model(shape: _core.ExpertShape, slowdown: float = 1.0) -> _core.PerfModel:
    """Roofline time of one expert copy on an H100: ``max(weight_bytes / BW, flops(n) / P)`` us for
    n > 0 tokens (0 for none), times ``slowdown`` (a GPU that is that much slower)."""
    read_us, us_per_token = h100_roofline(shape)
    ridge = read_us / us_per_token  # tokens where compute time equals the weight read
    return _core.PerfModel([ridge, 2 * ridge], [read_us, 2 * read_us]).scaled(slowdown)


def speed_spread_slowdowns(num_gpus: int, spread: float, seed: int = 0) -> np.ndarray:
    """Per-GPU slowdowns drawn uniformly from [1, 1 + spread] (fixed seed); all 1 for spread 0."""
    if not np.isfinite(spread) or spread < 0:
        raise _core.MoebalValueError(f"speed spread must be finite and >= 0, got {spread}")
    rng = np.random.default_rng(seed)
    return 1.0 + spread * rng.random(num_gpus) if spread > 0 else np.ones(num_gpus)


def speed_spread_models(num_gpus: int, spread: float, shape: _core.ExpertShape,
                        seed: int = 0) -> list[_core.PerfModel]:
    """One H100 model per GPU with slowdowns drawn uniformly from [1, 1 + spread] (fixed seed)."""
    return [h100_expert_model(shape, float(s)) for s in speed_spread_slowdowns(num_gpus, spread, seed)]


def _plan(name: str):
    def fn(loads: _core.LoadMatrix, *, num_slots: int, num_gpus: int, num_nodes: int = 1,
           num_groups: int = 1, topology: _core.Topology | None = None, **_: Any) -> _core.Placement:
        return _core.plan_placement(name, loads, num_slots, num_gpus, num_nodes, num_groups, topology)
    return fn


_DOCS = dict(_core.placement_policies())
for _name in ("eplb", "balanced", "vibe"):
    register_policy(_name, _DOCS[_name])(_plan(_name))


def topology_with_models(num_nodes: int, gpus_per_node: int, models: Sequence[_core.PerfModel]) -> _core.Topology:
    """A Topology with default link bandwidths and the given per-GPU models."""
    return _core.Topology(num_nodes, gpus_per_node, gpu_models=list(models))
