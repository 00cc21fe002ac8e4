"""Placement policies behind one interface.

A policy maps per-layer expert loads to a :class:`moebal.Placement`::

    placement = moebal.policies.plan("contiguous", loads, num_slots=64, num_gpus=8)

Every policy takes the same arguments (keyword-only past ``loads``) and ignores those it does not
use: ``num_slots``, ``num_gpus``, ``num_nodes`` (default 1), ``num_groups`` (expert groups, default
1), ``topology`` (a :class:`moebal.Topology`, for speed-aware policies) and ``trace`` (a
:class:`moebal.RoutingTrace`, for co-activation-aware policies).
"""
from __future__ import annotations

from typing import Any, Callable

from moebal import _core

PolicyFn = Callable[..., _core.Placement]
_POLICIES: dict[str, tuple[PolicyFn, str]] = {}


def register_policy(name: str, doc: str) -> Callable[[PolicyFn], PolicyFn]:
    def deco(fn: PolicyFn) -> PolicyFn:
        if name in _POLICIES:
            raise ValueError(f"policy {name!r} is already registered")
        _POLICIES[name] = (fn, doc)
        return fn
    return deco


def available_policies() -> dict[str, str]:
    """Registered policy names and one-line descriptions, in registration order."""
    return {name: doc for name, (_, doc) in _POLICIES.items()}


def plan(policy: str, loads: Any, *, num_slots: int, num_gpus: int, num_nodes: int = 1,
         num_groups: int = 1, topology: _core.Topology | None = None,
         trace: _core.RoutingTrace | None = None) -> _core.Placement:
    """Run a registered policy. ``loads`` is a LoadMatrix or anything array-like [layers, experts]."""
    if policy not in _POLICIES:
        raise _core.MoebalValueError(f"unknown policy {policy!r}; available: {', '.join(_POLICIES)}")
    if not isinstance(loads, _core.LoadMatrix):
        from moebal.trace import from_eplb_weight

        loads = from_eplb_weight(loads)
    fn, _ = _POLICIES[policy]
    return fn(loads, num_slots=num_slots, num_gpus=num_gpus, num_nodes=num_nodes,
              num_groups=num_groups, topology=topology, trace=trace)


# Modules whose import registers more policies (a component adds its module here).
_POLICY_MODULES: tuple[str, ...] = ("moebal.solvers", "moebal.grace",)


@register_policy("contiguous", "static baseline: expert e on GPU e // (E/G), no replicas (needs slots == experts)")
def _contiguous(loads: _core.LoadMatrix, *, num_slots: int, num_gpus: int, num_nodes: int, **_: Any) -> _core.Placement:
    if num_slots != loads.num_experts:
        raise _core.MoebalValueError(
            f"policy 'contiguous' places one copy per expert: num_slots ({num_slots}) must equal "
            f"num_experts ({loads.num_experts})")
    return _core.Placement.contiguous(loads.num_layers, loads.num_experts, num_gpus, num_nodes)


def _load_policy_modules() -> None:
    import importlib

    for name in _POLICY_MODULES:
        importlib.import_module(name)


_load_policy_modules()
