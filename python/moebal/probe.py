"""PROBE planner: per step and per layer, replicate the bottleneck's experts onto helper ranks and
hand them token quotas, within a per-rank slot cap and the hiding window of the weight transfers.

    plan = moebal.probe.plan(counts, placement, expert_bytes=44 << 20, window_us=300.0)
    plan.quota            # [L, R, E, R]: tokens of (source rank, expert) sent to each rank
    plan.replica_expert   # [L, R, S]: experts each rank receives into its extra slots (-1 = none)
    plan.replica_src      # [L, R, S]: the rank each replica's weights come from
    plan.imbalance()      # max/mean tokens per rank, before and after

    # The dense quota is R x E x R per layer (4 MiB at R = 64, E = 256); quota="sparse" returns only
    # the rows the moves changed (numpy inputs), and quota_to_dense() expands them when needed.
    plan = moebal.probe.plan(counts, placement, expert_bytes=44 << 20, quota="sparse")
    plan.quota_entries    # int32 [N, 5]: (layer, src rank, expert, dst rank, tokens)

``counts`` are predicted tokens per (source rank, expert), [R, E] for one layer or [L, R, E]; numpy
arrays run the C++ reference (``moebal._core``), torch tensors run ``torch.ops.moebal.probe_plan``
on their device (CPU or CUDA, the same plan bit for bit). See docs/probe.md for the algorithm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from moebal import _core

STAT_MOVES, STAT_NEW_REPLICAS, STAT_WINDOW_BLOCKED, STAT_STATUS = range(4)
_STATUS_BITS = {1: "negative counts or a layer total above 2^31-1", 2: "phy2log id out of range or an expert without a copy",
                4: "a per-rank model time that is non-finite, negative or too large",
                8: "a window that is NaN, negative, or finite above 1e9 us"}


@dataclass
class ProbePlan:
    """Result of :func:`plan` (numpy arrays, or torch tensors on the input's device)."""

    quota: Any           # int32 [L, R, E, R]; None unless quota="dense"
    replica_expert: Any  # int32 [L, R, S], -1 = unused extra slot
    replica_src: Any     # int32 [L, R, S], -1 = unused
    rank_time_us: Any    # float64 [L, 2, R]: predicted compute time before / after
    rank_tokens: Any     # int64 [L, 2, R]: tokens per rank before / after
    stats: Any           # int32 [L, 4]: moves, new replicas, window-blocked iterations, status
    quota_entries: Any = None  # int32 [N, 5] (layer, src, expert, dst, tokens) when quota="sparse"

    @property
    def moves(self):
        return self.stats[:, STAT_MOVES]

    @property
    def new_replicas(self):
        return self.stats[:, STAT_NEW_REPLICAS]

    @property
    def window_blocked(self):
        return self.stats[:, STAT_WINDOW_BLOCKED]

    def imbalance(self, kind: str = "tokens"):
        """Per-layer max/mean over ranks, (before, after), from ``tokens`` or predicted ``time``."""
        x = self.rank_tokens if kind == "tokens" else self.rank_time_us
        x = x.double() if hasattr(x, "double") and not isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float64)
        mean = x.mean(-1)
        mx = x.max(-1)
        mx = mx.values if hasattr(mx, "values") else mx
        ir = mx / mean
        ir = ir.nan_to_num(1.0) if hasattr(ir, "nan_to_num") else np.nan_to_num(ir, nan=1.0)
        return ir[:, 0], ir[:, 1]


def rank_expert_counts(trace: _core.RoutingTrace, step: int | None = None) -> np.ndarray:
    """Tokens per (layer, source rank, expert) of one step of a trace (all steps when None): int32
    [L, R, E]. Needs a trace with source ranks; padding ids (< 0) are skipped."""
    ids = np.asarray(trace.topk_ids)
    L, T, K = ids.shape
    src = trace.src_rank
    if src is None:
        raise _core.MoebalValueError("rank_expert_counts: the trace has no src_rank per token")
    src = np.asarray(src)
    R, E = int(trace.num_ranks), int(trace.num_experts)
    if step is not None:
        st = trace.step
        sel = np.ones(T, dtype=bool) if st is None else (np.asarray(st) == step)
        ids, src = ids[:, sel], src[sel]
    out = np.zeros((L, R * E), dtype=np.int64)
    flat = src[None, :, None].astype(np.int64) * E + ids
    for l in range(L):
        f = flat[l][ids[l] >= 0]
        out[l] = np.bincount(f, minlength=R * E)
    return out.reshape(L, R, E).astype(np.int32)


def _per_rank(value: Any, R: int, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        return np.full(R, float(v))
    if v.shape != (R,):
        raise _core.MoebalValueError(f"probe: {name} must be a scalar or have one value per rank ({R}), got shape {v.shape}")
    return v


def linearize(model: _core.PerfModel, ref_tokens: float = 256.0) -> tuple[float, float]:
    """(fixed_us, us_per_token) of the secant of a PerfModel between 1 and ref_tokens tokens."""
    if not ref_tokens > 1:
        raise _core.MoebalValueError(f"probe: ref_tokens must be > 1, got {ref_tokens}")
    t1, t2 = model.time_us(1.0), model.time_us(float(ref_tokens))
    b = max(0.0, (t2 - t1) / (ref_tokens - 1.0))
    return max(0.0, t1 - b), b


def plan(counts: Any, placement: Any, *, expert_bytes: int | None = None,
         expert_shape: _core.ExpertShape | None = None, topology: _core.Topology | None = None,
         fixed_us: Any = None, us_per_token: Any = None, window_us: Any = math.inf,
         max_extra_slots: int = 3, max_iters: int = 16, min_gain_us: float = 0.0,
         ranks_per_node: int | None = None, intra_node_GBps: float | None = None,
         inter_node_GBps: float | None = None, layers: Sequence[int] | None = None,
         ref_tokens: float = 256.0, check: bool = True, quota: str = "dense") -> ProbePlan:
    """Plan one or many layers.

    counts: predicted tokens per (source rank, expert): [R, E] or [L, R, E], numpy or torch (int).
    placement: a :class:`moebal.Placement` (its ``num_gpus`` must equal R) or a phy2log array
      [slots] / [L, slots]; ``layers`` picks the placement's layers to use (default: all, or the
      first one broadcast when it has a single layer).
    expert_bytes / expert_shape: bytes one replica transfer moves.
    topology: gives ranks_per_node, intra/inter-node bandwidths and, through its per-GPU models
      (linearised between 1 and ``ref_tokens`` tokens), the per-rank compute model.
    fixed_us, us_per_token: per-rank linear model t(n) = a + b n per expert (scalar or [R]);
      default 0 and 1 (time then equals tokens).
    window_us: hiding window per rank (scalar, [R] or [L, R]; inf = unlimited).
    check: on CUDA, read back the status (one host sync) and raise on bad input values.
    quota: "dense" (``plan.quota`` [L, R, E, R]), "sparse" (numpy counts only: ``plan.quota_entries``
      [N, 5] = (layer, src, expert, dst, tokens), the complete rows the moves touched, each layer's
      sorted by (expert, src, dst); every other (src, expert) row keeps the locality-first default
      split; :func:`quota_to_dense` expands it) or "none" (replicas, times and stats only).
    """
    if quota not in ("dense", "sparse", "none"):
        raise _core.MoebalValueError(f"probe: quota must be 'dense', 'sparse' or 'none', got {quota!r}")
    is_torch = type(counts).__module__.startswith("torch")
    if is_torch and quota == "sparse":
        raise _core.MoebalValueError("probe: quota='sparse' needs numpy counts (the C++ core); the torch op "
                                     "returns the dense quota")
    if is_torch:
        import torch

        device = counts.device
        c = counts.to(torch.int32).contiguous()
    else:
        c = np.asarray(counts)
        if c.dtype.kind not in "iu":
            raise _core.MoebalValueError(f"probe: counts must be integers, got dtype {c.dtype}")
    single = c.ndim == 2
    if single:
        c = c[None]
    if c.ndim != 3:
        raise _core.MoebalValueError(f"probe: counts must be [R, E] or [L, R, E], got shape {tuple(c.shape)}")
    L, R, E = (int(x) for x in c.shape)

    if isinstance(placement, _core.Placement):
        if placement.num_gpus != R:
            raise _core.MoebalValueError(f"probe: placement has {placement.num_gpus} GPUs but counts has {R} ranks")
        if placement.num_experts != E:
            raise _core.MoebalValueError(f"probe: placement has {placement.num_experts} experts but counts has {E}")
    p2l, ranks_per_node = _phy2log_per_layer(placement, L, layers, ranks_per_node)
    if p2l.ndim != 2 or p2l.shape[0] != L:
        raise _core.MoebalValueError(f"probe: placement has {p2l.shape[0]} layers but counts has {L}")

    if expert_bytes is None:
        if expert_shape is None:
            raise _core.MoebalValueError("probe: pass expert_bytes or expert_shape (bytes one replica transfer moves)")
        expert_bytes = expert_shape.weight_bytes
    if topology is not None:
        if topology.num_gpus != R:
            raise _core.MoebalValueError(f"probe: topology has {topology.num_gpus} GPUs but counts has {R} ranks")
        ranks_per_node = topology.gpus_per_node if ranks_per_node is None else ranks_per_node
        intra_node_GBps = topology.nvlink_GBps if intra_node_GBps is None else intra_node_GBps
        inter_node_GBps = topology.network_GBps if inter_node_GBps is None else inter_node_GBps
        models = list(topology.gpu_models)
        if models and (fixed_us is None or us_per_token is None):
            lin = [linearize(m, ref_tokens) for m in models]
            fixed_us = [a for a, _ in lin] if fixed_us is None else fixed_us
            us_per_token = [b for _, b in lin] if us_per_token is None else us_per_token
    a = _per_rank(0.0 if fixed_us is None else fixed_us, R, "fixed_us")
    b = _per_rank(1.0 if us_per_token is None else us_per_token, R, "us_per_token")
    w = np.asarray(window_us, dtype=np.float64)
    if w.ndim == 0:
        w = np.full((L, R), float(w))
    elif w.shape == (R,):
        w = np.broadcast_to(w, (L, R)).copy()
    elif w.shape != (L, R):
        raise _core.MoebalValueError(f"probe: window_us must be a scalar, [R] or [L, R] = [{L}, {R}], got {w.shape}")
    args = dict(expert_bytes=int(expert_bytes),
                intra_node_GBps=float(450.0 if intra_node_GBps is None else intra_node_GBps),
                inter_node_GBps=float(50.0 if inter_node_GBps is None else inter_node_GBps),
                ranks_per_node=int(0 if ranks_per_node is None else ranks_per_node),
                max_extra_slots=int(max_extra_slots), max_iters=int(max_iters), min_gain_us=float(min_gain_us))

    if is_torch:
        from moebal import probe_ops

        t = lambda x, dt: torch.as_tensor(np.ascontiguousarray(x), dtype=dt, device=device)  # noqa: E731
        out = probe_ops.probe_plan(c, t(p2l, torch.int32), t(a, torch.float64), t(b, torch.float64),
                                   t(w, torch.float64), **args)
        if check and device.type != "cpu":
            status = int(out[5][:, STAT_STATUS].max().item()) if L else 0
            if status:
                _raise_status(out[5][:, STAT_STATUS].cpu().numpy())
        if quota == "none":
            out = (None, *out[1:])
    else:
        out = _core.probe_plan(c, p2l, a, b, w, args["expert_bytes"], args["intra_node_GBps"],
                               args["inter_node_GBps"], args["ranks_per_node"], args["max_extra_slots"],
                               args["max_iters"], args["min_gain_us"], quota)
    return ProbePlan(*out)


def quota_to_dense(quota_entries: Any, counts: Any, placement: Any, *, ranks_per_node: int | None = None,
                   layers: Sequence[int] | None = None) -> np.ndarray:
    """Dense quota int32 [L, R, E, R] from ``plan(..., quota="sparse").quota_entries`` and the counts and
    placement the plan was made from (same ``placement``, ``layers`` and ``ranks_per_node`` as in
    :func:`plan`): the locality-first default split in every row, the listed rows replaced."""
    c = np.asarray(counts)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3:
        raise _core.MoebalValueError(f"probe: counts must be [R, E] or [L, R, E], got shape {c.shape}")
    p2l, ranks_per_node = _phy2log_per_layer(placement, c.shape[0], layers, ranks_per_node)
    entries = np.asarray(quota_entries)
    if entries.size == 0:
        entries = entries.reshape(0, 5)
    return _core.probe_quota_to_dense(c, p2l, entries, int(0 if ranks_per_node is None else ranks_per_node))


def _phy2log_per_layer(placement: Any, L: int, layers: Sequence[int] | None,
                       ranks_per_node: int | None) -> tuple[np.ndarray, int | None]:
    """(phy2log [layers, slots] for L counted layers, ranks_per_node) from a Placement or a phy2log
    array (numpy or torch): ``layers`` picks rows, a single layer is broadcast to L; a Placement
    supplies ranks_per_node when the caller gave none."""
    if isinstance(placement, _core.Placement):
        p2l = np.asarray(placement.phy2log)
        if ranks_per_node is None:
            ranks_per_node = placement.gpus_per_node
    else:
        p2l = np.asarray(placement.cpu() if hasattr(placement, "cpu") else placement)
        if p2l.ndim == 1:
            p2l = p2l[None]
    if layers is not None:
        p2l = p2l[np.asarray(list(layers), dtype=np.int64)]
    elif p2l.shape[0] == 1 and L > 1:
        p2l = np.repeat(p2l, L, axis=0)
    return p2l, ranks_per_node


def _raise_status(status: np.ndarray) -> None:
    bad = np.nonzero(status)[0]
    l = int(bad[0])
    bits = [msg for bit, msg in _STATUS_BITS.items() if int(status[l]) & bit]
    raise _core.MoebalValueError(f"probe: layer {l} (and {len(bad) - 1} more): " + "; ".join(bits))
