"""Routing-trace capture from Hugging Face transformers MoE models, with forward hooks.

Every supported MoE block in transformers 5.x has a router submodule whose forward takes the hidden
state the block routes on and returns ``(router_logits, topk_weights, topk_ids)``. A forward hook on
each router records, per MoE layer and forward call: the top-k expert ids, their gate weights, and
optionally the router's input (the hidden state entering the layer's MoE block, i.e. what its router
sees) and the router logits. A pre-hook on the model records token positions and the padding mask.

Records go to a sink: :class:`TraceWriter` streams them to a moebal trace file (``.npz``, schema 1,
see :mod:`moebal.trace`) through per-layer spill files, so memory stays bounded by ``chunk_tokens``
however long the run; :class:`MemorySink` keeps them in memory (predictor training).

Entry points: :func:`capture_trace` (one call: model + batches -> trace file) and the
:class:`RoutingRecorder` context manager (wrap any forward / ``generate`` loop; each forward call
is one step). Padding tokens (``attention_mask == 0``) are dropped.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Callable, Iterable

import numpy as np

from moebal import _core

# Router class name -> MoE family. Every one returns (router_logits, topk_weights, topk_ids).
SUPPORTED_ROUTERS: dict[str, str] = {
    "MixtralTopKRouter": "mixtral",
    "Qwen2MoeTopKRouter": "qwen2_moe",
    "Qwen3MoeTopKRouter": "qwen3_moe",
    "OlmoeTopKRouter": "olmoe",
    "DeepseekV2TopkRouter": "deepseek_v2",
    "DeepseekV3TopkRouter": "deepseek_v3",
    "GptOssTopKRouter": "gpt_oss",
}
SUPPORTED_MODEL_TYPES = tuple(sorted(set(SUPPORTED_ROUTERS.values())))


def _err(msg: str) -> Exception:
    return _core.MoebalValueError(msg)


def find_routers(model: Any) -> list[tuple[int, str, Any]]:
    """The router modules of ``model`` as ``(decoder_layer_index, qualified_name, module)``, sorted
    by layer. Raises MoebalValueError naming the model class when it has no supported router."""
    found = []
    for name, mod in model.named_modules():
        if type(mod).__name__ not in SUPPORTED_ROUTERS:
            continue
        parts = name.split(".")
        layer = next((int(p) for p in reversed(parts) if p.isdigit()), None)
        if layer is None:
            raise _err(f"capture: cannot tell the layer index of router {name!r}")
        found.append((layer, name, mod))
    if not found:
        mt = getattr(getattr(model, "config", None), "model_type", None)
        raise _err(f"capture: model class {type(model).__name__} (model_type={mt!r}) has no supported MoE "
                   f"router; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)} "
                   f"(router classes {', '.join(SUPPORTED_ROUTERS)})")
    found.sort(key=lambda t: t[0])
    layers = [t[0] for t in found]
    if len(set(layers)) != len(layers):
        raise _err(f"capture: several routers share a decoder layer index: {layers}")
    return found


class MemorySink:
    """Keeps captured steps in memory: ``topk_ids[l]``, ``topk_weights[l]``, ``hidden[l]``,
    ``logits[l]`` are lists of per-step arrays (numpy, or torch tensors with ``keep_torch``)."""

    def __init__(self, keep_torch: bool = False):
        self.keep_torch = keep_torch
        self.steps = 0
        self.position: list[np.ndarray] = []
        self.step: list[np.ndarray] = []
        self.topk_ids: dict[int, list] = {}
        self.topk_weights: dict[int, list] = {}
        self.hidden: dict[int, list] = {}
        self.logits: dict[int, list] = {}

    def write(self, rec: dict[str, Any]) -> None:
        self.position.append(rec["position"])
        self.step.append(np.full(rec["position"].shape, self.steps, np.int32))
        for l, d in enumerate(rec["layers"]):
            self.topk_ids.setdefault(l, []).append(d["topk_ids"])
            self.topk_weights.setdefault(l, []).append(d["topk_weights"])
            if "hidden" in d:
                self.hidden.setdefault(l, []).append(d["hidden"])
            if "logits" in d:
                self.logits.setdefault(l, []).append(d["logits"])
        self.steps += 1

    def cat(self, what: str, layer: int, release: bool = False):
        """All steps of ``what`` (``"hidden"``, ``"topk_ids"``, ...) at ``layer``, in step order. With
        ``release`` the per-step chunks are dropped and the concatenation kept in their place (one
        chunk): the memory of a large capture is held once instead of twice while a caller gathers
        every layer."""
        store = getattr(self, what)
        if layer not in store:
            raise KeyError(f"MemorySink has no {what!r} for layer {layer} (layers: {sorted(store)})")
        xs = store[layer]
        if self.keep_torch:
            import torch

            out = torch.cat(xs)
        else:
            out = np.concatenate(xs)
        if release:
            store[layer] = [out]
        return out

    def close(self) -> None:
        pass


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


class TraceWriter:
    """Streams captured routing to a moebal trace file (schema 1, kind ``routing``).

    Per-layer arrays are appended to raw spill files in a temporary directory every
    ``chunk_tokens`` tokens; :meth:`close` assembles the compressed ``.npz`` entry by entry, copying
    each layer's spill file in 1 MiB blocks, so neither capture nor close holds the whole trace.
    Layer-major arrays ``[layers, tokens, ...]``: ``topk_ids`` int32, ``topk_weights`` float32,
    and with ``store_hidden`` / ``store_logits`` ``hidden_states`` [L, T, H] / ``router_logits``
    [L, T, E] in ``dtype`` (float16 by default). Per token: ``step`` and ``position`` int32.
    """

    def __init__(self, path: str | os.PathLike, *, num_experts: int, chunk_tokens: int = 65536,
                 store_hidden: bool = False, store_logits: bool = False, dtype: Any = np.float16,
                 round_weights: bool = False, meta: dict[str, Any] | None = None):
        if chunk_tokens <= 0:
            raise _err(f"TraceWriter: chunk_tokens must be positive, got {chunk_tokens}")
        self.path = os.fspath(path)
        self.num_experts = int(num_experts)
        self.chunk_tokens = int(chunk_tokens)
        self.store_hidden, self.store_logits = store_hidden, store_logits
        self.dtype = np.dtype(dtype)
        self.round_weights = round_weights  # store gate weights at float16 precision (still float32): compresses 2x
        self.meta = dict(meta or {})
        self._tmp = tempfile.mkdtemp(prefix="moebal-trace-", dir=os.path.dirname(os.path.abspath(self.path)))
        self._buf: list[dict[str, Any]] = []
        self._buffered = 0
        self.num_tokens = 0
        self.num_steps = 0
        self.num_layers: int | None = None
        self.top_k: int | None = None
        self.hidden_size: int | None = None
        self._closed = False

    def _spill(self, name: str) -> str:
        return os.path.join(self._tmp, name + ".bin")

    def write(self, rec: dict[str, Any]) -> None:
        if self._closed:
            raise _err("TraceWriter: write after close")
        layers = rec["layers"]
        n = int(rec["position"].shape[0])
        if self.num_layers is None:
            self.num_layers = len(layers)
            self.top_k = int(layers[0]["topk_ids"].shape[1])
            if self.store_hidden:
                self.hidden_size = int(layers[0]["hidden"].shape[1])
        if len(layers) != self.num_layers:
            raise _err(f"TraceWriter: step {self.num_steps} has {len(layers)} layers, earlier steps had {self.num_layers}")
        for l, d in enumerate(layers):
            if d["topk_ids"].shape != (n, self.top_k):
                raise _err(f"TraceWriter: step {self.num_steps} layer {l}: topk_ids shape {d['topk_ids'].shape}, "
                           f"expected {(n, self.top_k)}")
            if self.store_hidden and d["hidden"].shape != (n, self.hidden_size):
                raise _err(f"TraceWriter: step {self.num_steps} layer {l}: hidden shape {d['hidden'].shape}, "
                           f"expected {(n, self.hidden_size)} (mismatched hidden size)")
            if self.store_logits and d["logits"].shape != (n, self.num_experts):
                raise _err(f"TraceWriter: step {self.num_steps} layer {l}: router logits shape {d['logits'].shape}, "
                           f"expected {(n, self.num_experts)}")
        rec = dict(rec, step=np.full(n, self.num_steps, np.int32))
        self._buf.append(rec)
        self._buffered += n
        self.num_tokens += n
        self.num_steps += 1
        if self._buffered >= self.chunk_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        def app(name: str, arr: np.ndarray) -> None:
            with open(self._spill(name), "ab") as f:
                f.write(np.ascontiguousarray(arr).tobytes())
        app("position", np.concatenate([r["position"] for r in self._buf]).astype(np.int32))
        app("step", np.concatenate([r["step"] for r in self._buf]))
        for l in range(self.num_layers):
            app(f"topk_ids.{l}", np.concatenate([r["layers"][l]["topk_ids"] for r in self._buf]).astype(np.int32))
            w = np.concatenate([r["layers"][l]["topk_weights"] for r in self._buf])
            app(f"topk_weights.{l}", (w.astype(np.float16) if self.round_weights else w).astype(np.float32))
            if self.store_hidden:
                app(f"hidden_states.{l}", np.concatenate([r["layers"][l]["hidden"] for r in self._buf]).astype(self.dtype))
            if self.store_logits:
                app(f"router_logits.{l}", np.concatenate([r["layers"][l]["logits"] for r in self._buf]).astype(self.dtype))
        self._buf, self._buffered = [], 0

    def _put(self, zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...], files: list[str]) -> None:
        with zf.open(name + ".npy", "w", force_zip64=True) as out:
            out.write(_npy_header(dtype, shape))
            for fn in files:
                with open(fn, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)

    def close(self) -> None:
        """Flush and write the trace file; the writer cannot be used afterwards."""
        if self._closed:
            return
        try:
            if self.num_layers is None or self.num_tokens == 0:
                raise _err(f"TraceWriter: nothing was captured; {self.path} not written")
            self.flush()
            L, T, K = self.num_layers, self.num_tokens, self.top_k
            meta = dict(self.meta, kind="routing", num_experts=self.num_experts, num_layers=L, top_k=K,
                        num_tokens=T, num_steps=self.num_steps)
            if self.store_hidden:
                meta.update(hidden_size=self.hidden_size, hidden_dtype=str(self.dtype))
            tmp_path = self.path + ".partial"
            with zipfile.ZipFile(tmp_path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                from moebal.trace import SCHEMA_VERSION

                with zf.open("__schema__.npy", "w") as out:
                    out.write(_npy_header(np.dtype(np.int64), ()))
                    out.write(np.int64(SCHEMA_VERSION).tobytes())
                mj = np.array(json.dumps(meta))
                with zf.open("__meta__.npy", "w") as out:
                    np.lib.format.write_array(out, mj, allow_pickle=False)
                self._put(zf, "topk_ids", np.dtype(np.int32), (L, T, K), [self._spill(f"topk_ids.{l}") for l in range(L)])
                self._put(zf, "topk_weights", np.dtype(np.float32), (L, T, K),
                          [self._spill(f"topk_weights.{l}") for l in range(L)])
                self._put(zf, "step", np.dtype(np.int32), (T,), [self._spill("step")])
                self._put(zf, "position", np.dtype(np.int32), (T,), [self._spill("position")])
                if self.store_hidden:
                    self._put(zf, "hidden_states", self.dtype, (L, T, self.hidden_size),
                              [self._spill(f"hidden_states.{l}") for l in range(L)])
                if self.store_logits:
                    self._put(zf, "router_logits", self.dtype, (L, T, self.num_experts),
                              [self._spill(f"router_logits.{l}") for l in range(L)])
            os.replace(tmp_path, self.path)
        finally:
            self._closed = True
            shutil.rmtree(self._tmp, ignore_errors=True)


class RoutingRecorder:
    """Context manager that hooks the routers of a transformers MoE model and sends one record per
    forward call (one step) to ``sink`` (a :class:`TraceWriter`, :class:`MemorySink`, or anything
    with ``write(record)``).

    A record: ``{"position": int32 [T], "layers": [{"topk_ids": [T, K], "topk_weights": [T, K],
    "hidden"?: [T, H], "logits"?: [T, E]}, ...]}`` for the T non-padding tokens of the call, in
    (batch, sequence) order. Hidden states and logits are kept on their device as torch tensors
    with ``to_numpy=False`` (for in-process training), else moved to numpy.
    """

    def __init__(self, model: Any, sink: Any, *, store_hidden: bool = False, store_logits: bool = False,
                 to_numpy: bool = True, hidden_dtype: Any = None):
        import torch

        self.model = model
        self.sink = sink
        self.store_hidden, self.store_logits = store_hidden, store_logits
        self.to_numpy = to_numpy
        self.hidden_dtype = hidden_dtype if hidden_dtype is not None else torch.float16
        self.routers = find_routers(model)
        self.layer_ids = [t[0] for t in self.routers]
        cfg = getattr(model, "config", None)
        self.hidden_size = int(getattr(cfg, "hidden_size", 0) or 0)
        self._handles: list[Any] = []
        self._cur: dict[int, dict[str, Any]] = {}
        self._mask: Any = None
        self._position: Any = None
        self._shape: tuple[int, int] | None = None

    @property
    def num_experts(self) -> int:
        m = self.routers[0][2]
        return int(getattr(m, "num_experts", None) or m.weight.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.routers[0][2].top_k)

    def _out(self, x: Any, dtype: Any = None) -> Any:
        if dtype is not None:
            x = x.to(dtype)
        if self.to_numpy:
            return x.detach().cpu().numpy()
        return x.detach()

    def _pre_model(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else emb
        if ref is None:
            raise _err("capture: the model was called without input_ids or inputs_embeds")
        B, S = int(ref.shape[0]), int(ref.shape[1])
        self._shape = (B, S)
        mask = kwargs.get("attention_mask")
        self._mask = None if mask is None or mask.dim() != 2 or mask.shape[1] != S else mask.bool().reshape(-1)
        pos = kwargs.get("position_ids")
        if pos is None:
            cp = kwargs.get("cache_position")
            base = cp.reshape(1, S) if cp is not None and cp.numel() == S else torch.arange(S, device=ref.device).reshape(1, S)
            pos = base.expand(B, S)
        self._position = pos.reshape(-1)
        self._cur = {}

    def _router_hook(self, idx: int) -> Callable:
        def hook(module: Any, args: tuple, output: Any) -> None:
            if not isinstance(output, tuple) or len(output) < 3:
                raise _err(f"capture: router {self.routers[idx][1]} returned {type(output).__name__}, "
                           "expected (router_logits, topk_weights, topk_ids)")
            logits, weights, ids = output[0], output[1], output[2]
            hidden = args[0]
            H = hidden.shape[-1]
            if self.hidden_size and H != self.hidden_size:
                raise _err(f"capture: router {self.routers[idx][1]} input has hidden size {H}, "
                           f"model config says {self.hidden_size}")
            ids = ids.reshape(-1, ids.shape[-1])
            T = ids.shape[0]
            keep = self._mask
            if keep is not None and keep.numel() != T:
                raise _err(f"capture: router {self.routers[idx][1]} saw {T} tokens, the attention mask has {keep.numel()}")
            w = weights.reshape(T, -1)
            if w.shape[1] != ids.shape[1]:  # routers returning dense [T, E] scores: gather the chosen
                w = w.gather(1, ids.long())
            sel = (lambda x: x[keep]) if keep is not None else (lambda x: x)
            d = {"topk_ids": self._out(sel(ids).int()), "topk_weights": self._out(sel(w).float())}
            if self.store_hidden:
                d["hidden"] = self._out(sel(hidden.reshape(T, H)), self.hidden_dtype)
            if self.store_logits:
                d["logits"] = self._out(sel(logits.reshape(T, -1)), self.hidden_dtype)
            self._cur[idx] = d
        return hook

    def _post_model(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        missing = [self.layer_ids[i] for i in range(len(self.routers)) if i not in self._cur]
        if missing:
            raise _err(f"capture: forward call finished without routing from MoE layer(s) {missing} "
                       f"(decoder layer ids); traces need every MoE layer of every step")
        pos = self._position
        if self._mask is not None:
            pos = pos[self._mask]
        rec = {"position": pos.int().cpu().numpy(), "layers": [self._cur[i] for i in range(len(self.routers))]}
        self.sink.write(rec)
        self._cur = {}

    def __enter__(self) -> "RoutingRecorder":
        self._handles.append(self.model.register_forward_pre_hook(self._pre_model, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._post_model, with_kwargs=True))
        for i, (_, _, mod) in enumerate(self.routers):
            self._handles.append(mod.register_forward_hook(self._router_hook(i)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _as_inputs(batch: Any) -> dict[str, Any]:
    import torch

    if isinstance(batch, dict):
        return dict(batch)
    if isinstance(batch, (torch.Tensor, np.ndarray, list)):
        t = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        return {"input_ids": t.long()}
    raise _err(f"capture: a batch must be a dict of model inputs or input_ids [batch, seq], got {type(batch).__name__}")


def capture_trace(model: Any, batches: Iterable[Any], path: str | os.PathLike, *, store_hidden: bool = False,
                  store_logits: bool = False, chunk_tokens: int = 65536, hidden_dtype: str = "float16",
                  round_weights: bool = False, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``model`` on each batch (input_ids [B, S], or a dict of model inputs such as
    ``input_ids`` + ``attention_mask``) under ``torch.no_grad`` and write its routing to ``path``.

    Each batch is one step; ``round_weights`` stores gate weights at float16 precision (halves the
    compressed size of shipped traces). Returns the trace metadata. The trace loads with
    :func:`moebal.load_trace` (ids, weights, steps) and :func:`moebal.trace.load_arrays` (hidden
    states, logits, positions).
    """
    import torch

    np_dtype = np.dtype(hidden_dtype)
    torch_dtype = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}.get(np_dtype)
    if torch_dtype is None:
        raise _err(f"capture_trace: hidden_dtype must be float16 or float32, got {hidden_dtype}")
    routers = find_routers(model)
    cfg = getattr(model, "config", None)
    m = {"model": type(model).__name__, "model_type": getattr(cfg, "model_type", None), "source": "moebal.capture",
         "moe_layer_ids": [t[0] for t in routers], "router_names": [t[1] for t in routers]}
    m.update(meta or {})
    writer = TraceWriter(path, num_experts=1, chunk_tokens=chunk_tokens, store_hidden=store_hidden,
                         store_logits=store_logits, dtype=np_dtype, round_weights=round_weights, meta=m)
    rec = RoutingRecorder(model, writer, store_hidden=store_hidden, store_logits=store_logits, hidden_dtype=torch_dtype)
    writer.num_experts = rec.num_experts
    try:
        with torch.no_grad(), rec:
            device = next(model.parameters()).device
            for b in batches:
                inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in _as_inputs(b).items()}
                model(**inputs, use_cache=False)
        writer.close()
    except BaseException:
        writer._closed = True
        shutil.rmtree(writer._tmp, ignore_errors=True)
        raise
    from moebal.trace import trace_meta

    return trace_meta(path)


def capture_cli(args: Any) -> int:
    """``moebal capture``: load a model (or build one with random weights from a config.json), cut
    the input into [batch, seq_len] steps and write the trace."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise _err(f"moebal capture needs torch and transformers ({e})") from e
    dtype = getattr(torch, args.dtype)
    if os.path.isfile(args.model) and args.model.endswith(".json"):
        torch.manual_seed(args.seed)
        cfg = transformers.AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(args.model)) or ".")
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        source = f"random weights from {args.model} (seed {args.seed})"
    elif os.path.isdir(args.model):
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        source = args.model
    else:
        raise _err(f"capture: {args.model} is neither a model directory nor a config.json")
    model = model.to(device=args.device, dtype=dtype).eval()
    find_routers(model)  # fail early, naming the model class, before reading the input
    if args.tokens:
        ids = np.load(args.tokens, allow_pickle=False)
    else:
        if not os.path.isdir(args.model):
            raise _err("capture: --text needs a model directory holding a tokenizer")
        tok = transformers.AutoTokenizer.from_pretrained(args.model)
        ids = np.concatenate([np.asarray(tok(open(f, encoding="utf-8", errors="replace").read())["input_ids"])
                              for f in args.text])
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim == 1:
        n = ids.size // args.seq_len
        if n == 0:
            raise _err(f"capture: {ids.size} tokens are fewer than --seq-len {args.seq_len}")
        ids = ids[: n * args.seq_len].reshape(n, args.seq_len)
    if ids.ndim != 2:
        raise _err(f"capture: token ids must be [N] or [sequences, seq_len], got shape {ids.shape}")
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab and (ids.min() < 0 or ids.max() >= vocab):
        raise _err(f"capture: token ids must be in [0, {vocab}), got [{ids.min()}, {ids.max()}]")
    steps = [torch.from_numpy(ids[i:i + args.batch]) for i in range(0, ids.shape[0], args.batch)]
    if args.max_steps:
        steps = steps[: args.max_steps]
    meta = capture_trace(model, steps, args.out, store_hidden=args.store_hidden, store_logits=args.store_logits,
                         meta={"source": source})
    print(f"{args.out}: {meta['num_layers']} MoE layers x {meta['num_tokens']} tokens in {meta['num_steps']} steps, "
          f"{meta['num_experts']} experts top-{meta['top_k']} ({meta['model']})")
    return 0
