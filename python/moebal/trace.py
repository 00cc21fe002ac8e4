"""On-disk routing traces and converters.

Format (``.npz``, schema version 1). A trace file holds either token-level routing or only loads:

- ``__schema__``: int64 scalar, the schema version (1).
- ``__meta__``: a JSON string (0-d unicode array): ``{"kind": "routing"|"loads", "num_experts": E,
  "model": str, "source": str, ...}``; free-form extra keys are kept.
- kind ``routing``: ``topk_ids`` int32 [layers, tokens, k]; optional ``topk_weights`` float32 of the
  same shape, ``src_rank`` int32 [tokens], ``step`` int32 [tokens] (non-decreasing).
- kind ``loads``: ``step_loads`` float64 [steps, layers, experts] (per-step expert token counts).
- optional, kind ``routing``, written by :mod:`moebal.capture` (readers that do not know them skip
  them, so they need no schema bump): ``position`` int32 [tokens] (position in its sequence),
  ``hidden_states`` float16/float32 [layers, tokens, hidden] (the hidden state entering the layer's
  MoE block, i.e. its router input; ``__meta__`` then has ``hidden_size``), ``router_logits``
  float16/float32 [layers, tokens, experts]. Read them with :func:`load_arrays`.

Loading validates everything through the C++ core and raises :class:`moebal.MoebalValueError`
(a ``ValueError``) naming the bad field.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moebal import _core

SCHEMA_VERSION = 1


@dataclass
class LoadTrace:
    """Per-step expert loads without token-level routing: ``step_loads`` [steps, layers, experts]."""

    step_loads: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.step_loads = np.asarray(self.step_loads, dtype=np.float64)
        _core.sum_step_loads(self.step_loads)  # validates shape and values

    @property
    def num_steps(self) -> int:
        return int(self.step_loads.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.step_loads.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.step_loads.shape[2])

    def loads(self, step_begin: int = 0, step_end: int | None = None) -> _core.LoadMatrix:
        end = self.num_steps if step_end is None else step_end
        if not 0 <= step_begin < end <= self.num_steps:
            raise _core.MoebalValueError(f"load trace: bad step range [{step_begin}, {end}) for {self.num_steps} steps")
        return _core.sum_step_loads(self.step_loads[step_begin:end])


def _err(msg: str) -> Exception:
    return _core.MoebalValueError(msg)


def save_trace(path: str | os.PathLike, trace: _core.RoutingTrace | LoadTrace, **meta: Any) -> None:
    """Write a RoutingTrace or LoadTrace to ``path`` (.npz, compressed). Extra keyword arguments go
    into the metadata (e.g. ``model="Mixtral-8x7B"``, ``source="captured"``)."""
    m = dict(getattr(trace, "meta", {}) or {})
    m.update(meta)
    arrays: dict[str, np.ndarray] = {"__schema__": np.int64(SCHEMA_VERSION)}
    if isinstance(trace, LoadTrace):
        m.update(kind="loads", num_experts=trace.num_experts)
        arrays["step_loads"] = trace.step_loads
    elif isinstance(trace, _core.RoutingTrace):
        m.update(kind="routing", num_experts=trace.num_experts)
        arrays["topk_ids"] = trace.topk_ids
        for name in ("topk_weights", "src_rank", "step"):
            value = getattr(trace, name)
            if value is not None:
                arrays[name] = value
    else:
        raise TypeError(f"save_trace: expected RoutingTrace or LoadTrace, got {type(trace).__name__}")
    arrays["__meta__"] = np.array(json.dumps(m))
    np.savez_compressed(path, **arrays)


def load_trace(path: str | os.PathLike) -> _core.RoutingTrace | LoadTrace:
    """Read a trace written by :func:`save_trace`; validates schema, shapes, ids and values."""
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise _err(f"trace {path}: not a readable .npz file ({e})") from e
    with z:
        if "__schema__" not in z.files or "__meta__" not in z.files:
            raise _err(f"trace {path}: missing __schema__/__meta__; not a moebal trace")
        version = int(z["__schema__"])
        if version != SCHEMA_VERSION:
            raise _err(f"trace {path}: schema version {version} is not supported (this moebal reads {SCHEMA_VERSION})")
        try:
            meta = json.loads(str(z["__meta__"]))
        except json.JSONDecodeError as e:
            raise _err(f"trace {path}: __meta__ is not valid JSON ({e})") from e
        kind = meta.get("kind")
        if kind == "loads":
            if "step_loads" not in z.files:
                raise _err(f"trace {path}: kind 'loads' needs the array step_loads")
            return LoadTrace(z["step_loads"], meta)
        if kind != "routing":
            raise _err(f"trace {path}: unknown kind {kind!r} (expected 'routing' or 'loads')")
        if "topk_ids" not in z.files:
            raise _err(f"trace {path}: kind 'routing' needs the array topk_ids")
        if "num_experts" not in meta:
            raise _err(f"trace {path}: __meta__ lacks num_experts")
        opt = {k: (z[k] if k in z.files else None) for k in ("topk_weights", "src_rank", "step")}
        t = _core.RoutingTrace(z["topk_ids"], int(meta["num_experts"]), **opt)
        return t


OPTIONAL_ARRAYS = ("position", "hidden_states", "router_logits")


def load_arrays(path: str | os.PathLike, names: tuple[str, ...] = ("topk_ids", "topk_weights", "step") + OPTIONAL_ARRAYS,
                *, layers: slice | None = None) -> dict[str, np.ndarray]:
    """Raw arrays of a routing trace (numpy, as stored), plus ``meta``; validates the schema and
    that every per-layer array covers the same layers and tokens as ``topk_ids``. Names absent
    from the file are left out. ``layers`` slices the layer axis of the per-layer arrays.
    """
    with np.load(path, allow_pickle=False) as z:
        if "__schema__" not in z.files or "__meta__" not in z.files:
            raise _err(f"trace {path}: missing __schema__/__meta__; not a moebal trace")
        version = int(z["__schema__"])
        if version != SCHEMA_VERSION:
            raise _err(f"trace {path}: schema version {version} is not supported (this moebal reads {SCHEMA_VERSION})")
        meta = json.loads(str(z["__meta__"]))
        if meta.get("kind") != "routing" or "topk_ids" not in z.files:
            raise _err(f"trace {path}: load_arrays needs a routing trace with topk_ids (kind={meta.get('kind')!r})")
        out: dict[str, Any] = {"meta": meta}
        full_layers = None
        for n in names:
            if n in z.files:
                a = z[n]
                if n == "topk_ids":
                    full_layers = int(a.shape[0])
                if layers is not None and n in ("topk_ids", "topk_weights", "hidden_states", "router_logits"):
                    a = a[layers]
                out[n] = a
        if "topk_ids" not in out:
            ids = z["topk_ids"]
            full_layers = int(ids.shape[0])
            out_ids_shape = ids[layers].shape if layers is not None else ids.shape
        else:
            out_ids_shape = out["topk_ids"].shape
    ids_shape = out_ids_shape
    L_meta = meta.get("num_layers")
    if L_meta is not None and int(L_meta) != full_layers:
        raise _err(f"trace {path}: topk_ids has {full_layers} layers, __meta__ says num_layers={L_meta} (missing layers)")
    T = ids_shape[1]
    for n in ("topk_weights", "hidden_states", "router_logits"):
        if n in out:
            a = out[n]
            if a.ndim != 3 or a.shape[0] != ids_shape[0] or a.shape[1] != T:
                raise _err(f"trace {path}: {n} has shape {a.shape}, expected [{ids_shape[0]} layers, {T} tokens, ...] "
                           "like topk_ids (missing layers or tokens)")
    if "hidden_states" in out and "hidden_size" in meta and out["hidden_states"].shape[2] != int(meta["hidden_size"]):
        raise _err(f"trace {path}: hidden_states has hidden size {out['hidden_states'].shape[2]}, "
                   f"__meta__ says hidden_size={meta['hidden_size']}")
    if "router_logits" in out and out["router_logits"].shape[2] != int(meta.get("num_experts", -1)):
        raise _err(f"trace {path}: router_logits has {out['router_logits'].shape[2]} experts, "
                   f"__meta__ says num_experts={meta.get('num_experts')}")
    for n in ("position", "step"):
        if n in out and out[n].shape != (T,):
            raise _err(f"trace {path}: {n} has shape {out[n].shape}, expected ({T},)")
    return out


def slice_steps(trace: _core.RoutingTrace, step_begin: int, step_end: int) -> _core.RoutingTrace:
    """The tokens of ``trace`` whose step lies in [step_begin, step_end), as a new RoutingTrace."""
    step = trace.step
    if step is None:
        step = np.zeros(trace.num_tokens, dtype=np.int32)
    keep = (step >= step_begin) & (step < step_end)
    if not keep.any():
        raise _err(f"slice_steps: no token has a step in [{step_begin}, {step_end})")
    w = trace.topk_weights
    r = trace.src_rank
    return _core.RoutingTrace(trace.topk_ids[:, keep], trace.num_experts,
                              None if w is None else w[:, keep], None if r is None else r[keep], step[keep])


def trace_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a trace file, without loading its arrays."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["__meta__"]))


def from_eplb_weight(weight: Any) -> _core.LoadMatrix:
    """Convert DeepSeek EPLB's ``weight[layers, experts]`` (tensor or array) into a LoadMatrix."""
    if hasattr(weight, "detach"):  # torch.Tensor, without importing torch
        weight = weight.detach().to("cpu").double().numpy()
    return _core.LoadMatrix(np.asarray(weight, dtype=np.float64))


def from_step_counts(counts: Any = None, *, csv_path: str | os.PathLike | None = None,
                     num_layers: int | None = None, num_experts: int | None = None) -> LoadTrace:
    """Build a LoadTrace from plain per-step expert-count logs.

    Either ``counts``: an array [steps, layers, experts] (or [steps, experts] for one layer), or
    ``csv_path``: a CSV with header ``step,layer,expert,count`` (one row per non-zero count; missing
    rows are zero). ``num_layers``/``num_experts`` fix the sizes for CSV logs (default: max seen + 1).
    """
    if (counts is None) == (csv_path is None):
        raise _err("from_step_counts: pass exactly one of counts or csv_path")
    if counts is not None:
        a = np.asarray(counts, dtype=np.float64)
        if a.ndim == 2:
            a = a[:, None, :]
        if a.ndim != 3:
            raise _err(f"from_step_counts: counts must be [steps, layers, experts], got shape {a.shape}")
        return LoadTrace(a, {"source": "step-counts"})
    rows = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"step", "layer", "expert", "count"}
        if reader.fieldnames is None or not need.issubset(reader.fieldnames):
            raise _err(f"from_step_counts: {csv_path} needs the header columns {sorted(need)}, got {reader.fieldnames}")
        for i, r in enumerate(reader, start=2):
            try:
                s, l, e, c = int(r["step"]), int(r["layer"]), int(r["expert"]), float(r["count"])
            except (TypeError, ValueError) as ex:
                raise _err(f"from_step_counts: {csv_path} line {i}: {ex}") from ex
            if s < 0 or l < 0 or e < 0:
                raise _err(f"from_step_counts: {csv_path} line {i}: negative step/layer/expert")
            rows.append((s, l, e, c))
    if not rows:
        raise _err(f"from_step_counts: {csv_path} holds no rows")
    arr = np.array(rows, dtype=np.float64)
    S = int(arr[:, 0].max()) + 1
    L = num_layers if num_layers is not None else int(arr[:, 1].max()) + 1
    E = num_experts if num_experts is not None else int(arr[:, 2].max()) + 1
    if arr[:, 1].max() >= L or arr[:, 2].max() >= E:
        raise _err(f"from_step_counts: {csv_path} has layer/expert ids beyond num_layers={L}/num_experts={E}")
    out = np.zeros((S, L, E))
    np.add.at(out, (arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2].astype(int)), arr[:, 3])
    return LoadTrace(out, {"source": f"csv:{os.path.basename(str(csv_path))}"})
