"""Drop-in replacement for DeepSeek EPLB's ``rebalance_experts``.

Projects that call ``eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)``
can switch to moebal's C++ implementation by changing the import::

    from moebal.eplb import rebalance_experts

Same inputs, outputs, shapes, dtypes and semantics as the published algorithm (hierarchical when
``num_groups % num_nodes == 0``, global otherwise), written from its description. Like the original,
the weight is read as float32 and the results are int64 tensors on the CPU (the original moves
``weight`` to the CPU before planning and builds every output there):

- ``phy2log`` [layers, num_replicas]: logical expert held by each physical slot;
- ``log2phy`` [layers, experts, num_replicas - experts + 1]: slots of each expert by replica rank,
  padded with -1;
- ``logcnt`` [layers, experts]: copies per expert.

Unlike the original (which asserts or divides by zero), bad input raises
:class:`moebal.MoebalValueError` naming the problem.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from moebal import _core

__all__ = ["rebalance_experts"]


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _core.MoebalValueError(f"eplb: {name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def rebalance_experts(weight: Any, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int):
    """Plan replicas and their GPUs from per-layer expert loads ``weight`` [layers, experts].

    Returns ``(phy2log, log2phy, logcnt)`` as int64 CPU tensors (see the module docstring).
    """
    import torch

    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"eplb: weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise _core.MoebalValueError(f"eplb: weight must be 2-D [layers, experts], got shape {tuple(weight.shape)}")
    if weight.dtype == torch.bool or weight.is_complex():
        raise _core.MoebalValueError(f"eplb: weight must be a real number tensor, got dtype {weight.dtype}")
    if weight.device.type == "meta":
        raise _core.MoebalValueError("eplb: weight is on the meta device and holds no values")
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise _core.MoebalValueError(f"eplb: weight must be non-empty, got shape {tuple(weight.shape)}")
    R = _check_count("num_replicas", num_replicas)
    groups = _check_count("num_groups", num_groups)
    nodes = _check_count("num_nodes", num_nodes)
    gpus = _check_count("num_gpus", num_gpus)
    # float32 first, as the original reads it; the C++ core then works in double.
    w = weight.detach().float().cpu().double().numpy()
    phy2log, phyrank, logcnt, _ = _core.eplb_rebalance(w, R, groups, nodes, gpus)
    L, E = w.shape
    max_copies = R - E + 1
    log2phy = np.full((L, E * max_copies), -1, dtype=np.int64)
    rows = np.arange(L)[:, None]
    log2phy[rows, phy2log * max_copies + phyrank] = np.arange(R, dtype=np.int64)[None, :]
    return (torch.from_numpy(phy2log), torch.from_numpy(log2phy.reshape(L, E, max_copies)),
            torch.from_numpy(logcnt))
