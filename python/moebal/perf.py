"""Per-GPU expert performance models measured on the GPUs at hand (the input of the ``vibe`` policy).

ViBE places experts knowing each GPU's *measured* speed. :func:`measure_expert_times` times
moebal's own expert FFN (:func:`moebal.gemm_ops.expert_ffn`, the kernel ``moe_forward`` runs) on one
GPU at a range of token counts, :func:`measure_gpu_models` does it on every listed GPU and fits one
:class:`moebal.PerfModel` per GPU (piecewise linear, :meth:`PerfModel.fit`), and
:func:`save_models` / :func:`load_models` keep them in a small JSON file that ``moebal plan --perf``
and :func:`topology_from_file` read::

    moebal profile --expert-shape 7168,2048 --out perf.json      # on the serving machine
    moebal plan trace.npz --policy vibe --gpus 8 --perf perf.json

What is timed: ``groups`` experts of the given shape (distinct random bf16 weights, enough of them
that the weights do not stay in L2 between calls, as in a real layer), ``n`` tokens each, in one
grouped call, captured in a CUDA graph of several calls and replayed; the time per call divided by
``groups`` is the time one expert copy costs inside a layer's grouped launch at ``n`` tokens.

Links (``moebal profile --links``, :func:`measure_links`): for every ordered pair of the listed GPUs,
the time of a device-to-device copy of expert-sized buffers (1-256 MiB), fitted as ``latency +
bytes / bandwidth``. That is the transfer a replica move pays; the file's slowest pair becomes the
intra-node bandwidth of :func:`topology_from_file`, which the PROBE planner's hiding-window check
reads (:func:`moebal.probe.plan` with ``topology=``).
"""
from __future__ import annotations

import json
import math
import time
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from moebal import _core

FORMAT = "moebal-perf-models"
VERSION = 1
DEFAULT_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_LINK_BYTES = tuple(1 << s for s in (20, 22, 24, 26, 28))  # 1, 4, 16, 64, 256 MiB
_MIN_WEIGHT_BYTES = 256 << 20  # weights per timed call: a few times an H100's 50 MB L2


def _err(msg: str) -> _core.MoebalValueError:
    return _core.MoebalValueError(msg)


def _check_tokens(tokens: Iterable[int]) -> List[int]:
    t = [int(n) for n in tokens]
    if not t or min(t) < 1 or any(b <= a for a, b in zip(t, t[1:])):
        raise _err(f"token counts must be positive and strictly increasing, got {t}")
    return t


def default_groups(shape: _core.ExpertShape) -> int:
    """Experts per timed call: at least 8, and enough that their weights exceed 256 MiB (at most 256)."""
    return int(min(256, max(8, math.ceil(_MIN_WEIGHT_BYTES / shape.weight_bytes))))


def measure_expert_times(shape: _core.ExpertShape, tokens: Sequence[int] = DEFAULT_TOKENS, *,
                         device=None, groups: Optional[int] = None, calls: int = 5, reps: int = 7,
                         seed: int = 0) -> np.ndarray:
    """Microseconds one expert copy of ``shape`` costs at each token count on one GPU (see the module
    docstring): the median over ``reps`` graph replays of ``calls`` grouped calls, divided by
    ``calls * groups``."""
    import torch

    from moebal import gemm_ops

    tokens = _check_tokens(tokens)
    if shape.dtype_bytes != 2:
        raise _err(f"moebal's expert kernels are bf16: the shape must have dtype_bytes 2, got {shape.dtype_bytes}")
    if calls < 1 or reps < 1:
        raise _err(f"calls and reps must be >= 1, got {calls} and {reps}")
    g = default_groups(shape) if groups is None else int(groups)
    if g < 1:
        raise _err(f"groups must be >= 1, got {g}")
    if not torch.cuda.is_available():
        raise _err("measuring expert times needs a CUDA device")
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if dev.type != "cuda":
        raise _err(f"measuring expert times needs a CUDA device, got {dev}")
    H, F = shape.hidden, shape.ffn
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.cuda.device(dev):
        w13 = (torch.randn(g, 2 * F, H, device=dev, generator=gen) * H ** -0.5).to(torch.bfloat16)
        w2 = (torch.randn(g, H, F, device=dev, generator=gen) * F ** -0.5).to(torch.bfloat16)
        x_all = torch.randn(g * tokens[-1], H, device=dev, generator=gen).to(torch.bfloat16)
        out = np.empty(len(tokens))
        for i, n in enumerate(tokens):
            x = x_all[: g * n]
            offsets = torch.arange(0, g * n + 1, n, device=dev, dtype=torch.int32)

            def call():
                gemm_ops.expert_ffn(x, w13, w2, offsets)

            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: workspaces and kernel choice
                    call()
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # an explicit capture stream on this device: torch's default one is created once, on
            # whichever device was current first, and capturing another device's work on it fails
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(dev)):
                for _ in range(calls):
                    call()
            graph.replay()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3)  # us
            del graph
            out[i] = float(np.median(times)) / (calls * g)
    return out


def fit_model(tokens: Sequence[int], micros: Sequence[float], num_knots: int = 8) -> _core.PerfModel:
    """Continuous piecewise-linear least-squares fit (:meth:`PerfModel.fit`)."""
    return _core.PerfModel.fit([float(n) for n in tokens], [float(t) for t in micros], num_knots)


def measure_gpu_models(shape: _core.ExpertShape, devices: Optional[Sequence[int]] = None,
                       tokens: Sequence[int] = DEFAULT_TOKENS, **kw) -> dict:
    """Measure on every listed CUDA device (default: all visible) and fit one model per GPU.

    Returns the dictionary :func:`save_models` writes (``gpus``: per GPU its name, index, samples and
    fitted knots)."""
    import torch

    devs = _check_devices(devices, "measuring expert times")
    tokens = _check_tokens(tokens)
    gpus = []
    for d in devs:
        micros = measure_expert_times(shape, tokens, device=f"cuda:{d}", **kw)
        model = fit_model(tokens, micros)
        gpus.append({"index": d, "name": torch.cuda.get_device_name(d), "tokens": tokens,
                     "micros": [float(v) for v in micros], "knot_tokens": list(model.knot_tokens),
                     "knot_micros": list(model.knot_micros)})
    return {"format": FORMAT, "version": VERSION,
            "shape": {"hidden": shape.hidden, "ffn": shape.ffn, "dtype_bytes": shape.dtype_bytes},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "gpus": gpus}


def _check_devices(devices: Optional[Sequence[int]], what: str) -> List[int]:
    import torch

    if not torch.cuda.is_available():
        raise _err(f"{what} needs a CUDA device")
    n = torch.cuda.device_count()
    devs = list(range(n)) if devices is None else [int(d) for d in devices]
    if not devs or min(devs) < 0 or max(devs) >= n:
        raise _err(f"devices must be in [0, {n}), got {devs}")
    if len(set(devs)) != len(devs):
        raise _err(f"devices must be distinct, got {devs}")
    return devs


def _check_sizes(sizes: Iterable[int]) -> List[int]:
    b = [int(v) for v in sizes]
    if len(b) < 2 or min(b) < 1 or any(y <= x for x, y in zip(b, b[1:])):
        raise _err(f"link sizes must be at least two positive, strictly increasing byte counts, got {b}")
    return b


def measure_link(src: int, dst: int, sizes: Sequence[int] = DEFAULT_LINK_BYTES, *, reps: int = 5,
                 min_bytes: int = 1 << 30) -> np.ndarray:
    """Microseconds of one copy of each size from GPU ``src`` to GPU ``dst`` (peer copy when the pair
    has peer access, else the driver's staged copy): per size, the median over ``reps`` of a run of
    back-to-back copies moving at least ``min_bytes``, timed by events on the source device's stream,
    which torch's cross-device copy runs on."""
    import torch

    sizes = _check_sizes(sizes)
    if reps < 1:
        raise _err(f"reps must be >= 1, got {reps}")
    if src == dst:
        raise _err(f"a link needs two devices, got {src} -> {dst}")
    _check_devices([src, dst], "measuring a link")
    a = torch.empty(sizes[-1], dtype=torch.uint8, device=f"cuda:{src}").fill_(1)
    b = torch.empty(sizes[-1], dtype=torch.uint8, device=f"cuda:{dst}")
    out = np.empty(len(sizes))
    with torch.cuda.device(src):
        for i, n in enumerate(sizes):
            copies = max(2, -(-min_bytes // n))
            b[:n].copy_(a[:n])  # warm-up: peer mappings
            torch.cuda.synchronize(src)
            torch.cuda.synchronize(dst)
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(copies):
                    b[:n].copy_(a[:n])
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3 / copies)
            out[i] = float(np.median(times))
    torch.cuda.synchronize(dst)
    return out


def fit_link(sizes: Sequence[int], micros: Sequence[float]) -> Tuple[float, float]:
    """Least-squares ``t = latency + bytes / bandwidth`` over the samples: (GB/s, latency us). The
    bandwidth is 1e9 bytes/s, as in :class:`moebal.Topology`; the latency is clamped at 0."""
    x = np.asarray([float(v) for v in sizes])
    y = np.asarray([float(v) for v in micros])
    if x.shape != y.shape or x.size < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise _err("fit_link needs at least two samples with positive, finite times")
    slope, icpt = np.polyfit(x, y, 1)  # us per byte, us
    if not slope > 0:
        raise _err(f"copy times do not grow with the size (slope {slope}): not a bandwidth")
    return float(1e-3 / slope), float(max(0.0, icpt))


def measure_links(devices: Optional[Sequence[int]] = None, sizes: Sequence[int] = DEFAULT_LINK_BYTES,
                  **kw) -> List[dict]:
    """Every ordered pair of the listed GPUs (default: all visible, at least two):
    ``{src, dst, peer, bytes, micros, GBps, latency_us}``."""
    import torch

    devs = _check_devices(devices, "measuring links")
    if len(devs) < 2:
        raise _err(f"measuring links needs at least two devices, got {devs}")
    sizes = _check_sizes(sizes)
    links = []
    for s in devs:
        for d in devs:
            if s == d:
                continue
            micros = measure_link(s, d, sizes, **kw)
            bw, lat = fit_link(sizes, micros)
            links.append({"src": s, "dst": d, "peer": bool(torch.cuda.can_device_access_peer(s, d)),
                          "bytes": sizes, "micros": [float(v) for v in micros], "GBps": bw, "latency_us": lat})
    return links


def links_from_dict(data: dict) -> List[dict]:
    """The measured links of a perf-model dictionary ([] when it has none), checked."""
    links = data.get("links", [])
    if not isinstance(links, list):
        raise _err("perf-model file: 'links' must be a list")
    for i, l in enumerate(links):
        try:
            src, dst, bw, lat = int(l["src"]), int(l["dst"]), float(l["GBps"]), float(l["latency_us"])
        except (KeyError, TypeError, ValueError) as e:
            raise _err(f"perf-model file: links[{i}] needs src, dst, GBps and latency_us ({e})") from None
        if src < 0 or dst < 0 or src == dst:
            raise _err(f"perf-model file: links[{i}] must join two distinct devices, got {src} -> {dst}")
        if not (math.isfinite(bw) and bw > 0) or not (math.isfinite(lat) and lat >= 0):
            raise _err(f"perf-model file: links[{i}] has GBps {bw} and latency_us {lat} (need > 0 and >= 0, finite)")
    return links


def link_GBps(data: dict) -> Optional[float]:
    """The slowest measured link's bandwidth (GB/s), or None when the file has no links."""
    links = links_from_dict(data)
    return min(float(l["GBps"]) for l in links) if links else None


def save_models(path: str, data: dict) -> None:
    """Write what :func:`measure_gpu_models` returned (checked as :func:`load_models` checks it)."""
    models_from_dict(data)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def models_from_dict(data: dict) -> Tuple[List[_core.PerfModel], _core.ExpertShape]:
    """The per-GPU models and the expert shape of a perf-model dictionary; MoebalValueError naming the
    field when it is malformed."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _err(f"not a moebal perf-model file (format must be {FORMAT!r})")
    if data.get("version") != VERSION:
        raise _err(f"perf-model file version {data.get('version')!r} is not supported (this moebal reads {VERSION})")
    try:
        sh = data["shape"]
        shape = _core.ExpertShape(int(sh["hidden"]), int(sh["ffn"]), int(sh["dtype_bytes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise _err(f"perf-model file: bad 'shape' ({e})") from None
    gpus = data.get("gpus")
    if not isinstance(gpus, list) or not gpus:
        raise _err("perf-model file: 'gpus' must be a non-empty list")
    models = []
    for i, g in enumerate(gpus):
        try:
            kt, km = [float(v) for v in g["knot_tokens"]], [float(v) for v in g["knot_micros"]]
        except (KeyError, TypeError, ValueError) as e:
            raise _err(f"perf-model file: gpus[{i}] has no valid knot_tokens / knot_micros ({e})") from None
        try:
            models.append(_core.PerfModel(kt, km))
        except _core.MoebalValueError as e:
            raise _err(f"perf-model file: gpus[{i}]: {e}") from None
    links_from_dict(data)
    return models, shape


def read_file(path: str) -> dict:
    """The dictionary of a file written by :func:`save_models` (or ``moebal profile``), parsed but not
    checked: :func:`models_from_dict` checks the models and :func:`links_from_dict` the links."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise _err(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise _err(f"{path}: not a perf-model file (a JSON object is expected)")
    return data


def load_models(path: str) -> Tuple[List[_core.PerfModel], _core.ExpertShape]:
    """Read a file written by :func:`save_models` (or ``moebal profile``)."""
    return models_from_dict(read_file(path))


def models_for_gpus(models: Sequence[_core.PerfModel], num_gpus: int,
                    slowdowns: Optional[Sequence[float]] = None) -> List[_core.PerfModel]:
    """One model per GPU: the file's models when there are ``num_gpus`` of them, or its single model
    for every GPU (each scaled by ``slowdowns[g]`` when given: what-if speed spreads)."""
    models = list(models)
    if len(models) == num_gpus:
        if slowdowns is not None and any(s != 1.0 for s in slowdowns):
            raise _err("a speed spread applies to a single measured model only: the file already has one model per GPU")
        return models
    if len(models) != 1:
        raise _err(f"the perf-model file has {len(models)} GPU models; need 1 (used for every GPU) or {num_gpus}")
    s = [1.0] * num_gpus if slowdowns is None else [float(v) for v in slowdowns]
    if len(s) != num_gpus:
        raise _err(f"{len(s)} slowdowns for {num_gpus} GPUs")
    return [models[0].scaled(v) for v in s]


def topology_from_file(path: str, num_nodes: int, gpus_per_node: int) -> _core.Topology:
    """A Topology whose GPU models come from a perf-model file (1 model, or one per GPU) and whose
    intra-node bandwidth is the file's slowest measured link (the default when it has none)."""
    data = read_file(path)
    models, _ = models_from_dict(data)
    bw = link_GBps(data)
    kw = {} if bw is None else {"nvlink_GBps": bw}
    return _core.Topology(num_nodes, gpus_per_node, gpu_models=models_for_gpus(models, num_nodes * gpus_per_node), **kw)
