"""GRACE-MoE: co-activation grouping + replication by skew, and the traffic it implies.

Registers the placement policy ``grace`` (see :func:`moebal.policies.plan`) and exposes the
pieces: :func:`plan` (all options), :func:`grouping` (one layer's primary GPUs), :func:`traffic`
(all-to-all bytes a placement implies on a trace under a token -> replica assignment policy) and
:func:`assign` (CPU reference of the assignment; the torch op is :func:`moebal.assign_ops.assign_replicas`).

The policy needs token-level routing for co-activation: ``plan("grace", loads, trace=trace, ...)``.
Without a trace it raises :class:`moebal.MoebalValueError` rather than silently degrading to a
load-only placement (the grouping is the point of the policy). Algorithm and limits: docs/grace.md.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from moebal import _core
from moebal.policies import register_policy

#: Token -> replica assignment policies understood by :func:`assign` and the torch op.
ASSIGN_POLICIES = ("round_robin", "hash", "locality", "quota", "weighted_locality")

DEFAULT_R = 0.15


def plan(loads: _core.LoadMatrix, *, num_slots: int, num_gpus: int, num_nodes: int = 1,
         trace: _core.RoutingTrace | None = None, coactivation: Any = None, r: float = DEFAULT_R,
         seed: int | None = None, refine_passes: int = 8, balance_tol: float | None = None) -> _core.Placement:
    """GRACE placement from ``loads`` and co-activation (a trace, or a matrix [layers, E, E]).

    ``refine_passes=0`` gives the paper's grouping alone (spectral clustering + Algorithm 2);
    the default adds a move/swap local search that raises intra-group co-activation without
    raising the heaviest group's load. ``balance_tol`` (ours; None = off, as in the paper) first
    balances node and GPU groups to within (1 + balance_tol) x their mean load where expert
    granularity allows, giving up as little co-activation as possible."""
    if trace is None and coactivation is None:
        raise _core.MoebalValueError(
            "policy 'grace' groups co-activated experts and needs token-level routing: pass "
            "trace=RoutingTrace (or coactivation=[layers, experts, experts])")
    kw: dict[str, Any] = {"num_slots": num_slots, "num_gpus": num_gpus, "num_nodes": num_nodes, "r": r,
                          "refine_passes": refine_passes, "balance_tol": -1.0 if balance_tol is None else balance_tol}
    if seed is not None:
        kw["seed"] = seed
    if trace is not None:
        return _core.grace_plan(loads, trace=trace, **kw)
    return _core.grace_plan(loads, coactivation=np.asarray(coactivation, dtype=np.float64), **kw)


@register_policy("grace", "GRACE-MoE: co-activation grouping (node, then GPU, tolerance r=0.15) + "
                          "replication of hot experts by skew; needs trace=")
def _grace(loads: _core.LoadMatrix, *, num_slots: int, num_gpus: int, num_nodes: int,
           trace: _core.RoutingTrace | None = None, **_: Any) -> _core.Placement:
    return plan(loads, num_slots=num_slots, num_gpus=num_gpus, num_nodes=num_nodes, trace=trace)


#: balance_tol of the registered policy ``grace_balanced``.
BALANCED_TOL = 0.05


@register_policy("grace_balanced", "GRACE-MoE with load-balanced groups (ours): groups within 5% of the mean "
                                   "load where possible, then co-activation; needs trace=")
def _grace_balanced(loads: _core.LoadMatrix, *, num_slots: int, num_gpus: int, num_nodes: int,
                    trace: _core.RoutingTrace | None = None, **_: Any) -> _core.Placement:
    return plan(loads, num_slots=num_slots, num_gpus=num_gpus, num_nodes=num_nodes, trace=trace,
                balance_tol=BALANCED_TOL)


def grouping(coactivation: Any, *, num_gpus: int, num_nodes: int = 1, slots_per_gpu: int | None = None,
             r: float = DEFAULT_R, refine_passes: int = 8, loads: Any = None,
             balance_tol: float | None = None) -> np.ndarray:
    """Primary GPU [E] of every expert of one layer from its co-activation matrix [E, E].

    ``loads`` [E] (optional) caps the refinement: no group ends heavier than the heaviest group
    of the paper's grouping."""
    c = np.asarray(coactivation, dtype=np.float64)
    spg = slots_per_gpu if slots_per_gpu is not None else -(-c.shape[0] // num_gpus)
    return _core.grace_grouping(c, num_gpus, num_nodes, spg, r, refine_passes=refine_passes,
                                loads=None if loads is None else np.asarray(loads, dtype=np.float64),
                                balance_tol=-1.0 if balance_tol is None else balance_tol)


def knee_r(trace: _core.RoutingTrace, *, num_gpus: int, num_nodes: int = 1, slots_per_gpu: int,
           candidates: Any = None) -> dict[str, Any]:
    """The paper's selection of r: sweep candidates (default 0, 0.05, ..., 0.5), measure U(r)
    (intra-GPU co-activation share) and S(r) (RMS group-size deviation), return the knee.
    Only spare slots allow non-uniform groups, so with slots_per_gpu == E / G every r is the same."""
    kw = {} if candidates is None else {"candidates": [float(c) for c in candidates]}
    return _core.grace_knee_r(trace, num_gpus, num_nodes, slots_per_gpu, **kw)


def affinity_kept(trace: _core.RoutingTrace, placement: _core.Placement) -> dict[str, float]:
    """Share of co-activation (pairs of experts chosen by one token) whose primaries share a GPU / a
    node, averaged over layers. Primary = the expert's first slot."""
    gpu_share, node_share = [], []
    slot_gpu = placement.slot_to_gpu
    for layer in range(placement.num_layers):
        c = trace.coactivation(layer)
        gpu = slot_gpu[placement.log2phy[layer, :, 0]]
        gpu_share.append(_core.intra_group_affinity(c, gpu))
        node_share.append(_core.intra_group_affinity(c, gpu // placement.gpus_per_node))
    return {"gpu": float(np.mean(gpu_share)), "node": float(np.mean(node_share))}


def assign(topk_ids: Any, src_rank: Any, placement: _core.Placement, *, layer: int = 0,
           policy: str = "weighted_locality", quota: Any = None, slot_weights: Any = None) -> np.ndarray:
    """CPU reference: the slot [T, K] serving each (token, k). See docs/grace.md for the policies."""
    return _core.assign_replicas(topk_ids, src_rank, placement, layer, policy, quota, slot_weights)


def slot_weights(loads: _core.LoadMatrix, placement: _core.Placement) -> np.ndarray:
    """GRACE routing weights per slot [L, S] (int32, 1..1024), proportional to 1 / predicted GPU load."""
    return _core.load_slot_weights(loads, placement)


def a2a_bytes(slots: Any, src_rank: Any, placement: _core.Placement, token_bytes: int) -> dict[str, int]:
    """Dispatch + combine bytes of one layer's assignment (pairs / flat / hier x intra / cross)."""
    return _core.a2a_bytes(slots, src_rank, placement, token_bytes)


def traffic(trace: _core.RoutingTrace, placement: _core.Placement, *, token_bytes: int,
            policy: str = "weighted_locality", slot_weights: Any = None) -> dict[str, np.ndarray]:
    """Per-layer all-to-all bytes of ``trace`` under ``placement`` and an assignment policy.

    Returns arrays [L]: ``pairs_intra``/``pairs_cross`` (one row per remote (token, k)),
    ``flat_intra``/``flat_cross`` (one row per (token, destination GPU)), ``hier_intra``/``hier_cross``
    (GRACE hierarchical: once per destination node, then NVLink fan-out), dispatch + combine; plus
    ``gpu_tokens`` [L, G] (rows computed per GPU) and ``imbalance`` [L] (max/mean of those).
    The trace's ``src_rank`` is each token's GPU and must be < ``placement.num_gpus``.
    """
    return _core.trace_traffic(trace, placement, policy, token_bytes, slot_weights)
