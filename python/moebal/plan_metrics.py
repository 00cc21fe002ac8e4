"""Placement quality metrics (C++ core): imbalance ratio, predicted step time under per-GPU
performance models, extra expert memory, and the lower bound on the best achievable busiest-GPU
load and on the best achievable roofline step time, per layer and overall. See docs/solvers.md for
the bounds and their proofs."""
from __future__ import annotations

from typing import Any, Sequence

from moebal import _core

lower_bounds = _core.lower_bounds
layer_lower_bound = _core.layer_lower_bound
time_lower_bounds = _core.time_lower_bounds
layer_time_lower_bound = _core.layer_time_lower_bound
gpu_times = _core.gpu_times
layer_step_times = _core.layer_step_times
extra_expert_bytes = _core.extra_expert_bytes


def evaluate(loads: _core.LoadMatrix, placement: _core.Placement, *,
             models: Sequence[_core.PerfModel] | None = None, shape: _core.ExpertShape | None = None,
             num_groups: int = 1) -> dict[str, Any]:
    """Metrics of ``placement`` under ``loads`` as a dict: per layer ``layer_ir``,
    ``layer_max_load``, ``layer_lower_bound``, ``layer_step_us``; overall ``mean_ir``, ``max_ir``,
    ``gap`` (sum of busiest loads / sum of bounds - 1), ``step_us`` (sum of layer step times),
    ``extra_copies`` and ``extra_bytes``. ``num_groups`` > 1 with num_groups % num_nodes == 0 bounds
    group-constrained placements (as eplb/balanced/vibe produce); 1 bounds any placement."""
    r = _core.evaluate_plan(loads, placement, list(models or []), shape, num_groups)
    return {k: getattr(r, k) for k in ("layer_ir", "layer_max_load", "layer_lower_bound", "layer_step_us",
                                       "mean_ir", "max_ir", "gap", "step_us", "extra_copies", "extra_bytes")}
