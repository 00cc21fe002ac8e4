"""Lookahead expert-routing predictors and their accuracy metrics.

One interface: ``predict(layer, hidden, k=None) -> Prediction(topk_ids, scores, counts)``
predicts the routing of MoE layer ``layer + 1`` from ``hidden``, the hidden state entering MoE
layer ``layer`` (the input of its router), ``layer`` in ``[0, num_layers - 1)``.

- :class:`NextGatePredictor`: apply layer ``l+1``'s router to ``hidden`` (the classic offloading
  baseline, e.g. Mixtral-Offloading / HOBBIT).
- :class:`ProbePredictor`: PROBE's gate-initialised lookahead predictor: a frozen copy of layer
  ``l+1``'s router plus a residual MLP ``W2 SiLU(W1 h)`` with ``W2 = 0`` at start (so it starts
  equal to next-gate), trained by distillation: cross-entropy against the true router's softmax
  probabilities. Offline (:meth:`ProbePredictor.fit`) from captured hidden states, or online with
  :class:`OnlineProbeTrainer`, which trains a shadow copy on a live stream and publishes new
  weights into the predictor's inactive buffer, then flips one index: inference never stops and
  never reads half-written weights.

Inference runs through the ``moebal::probe_predict`` op (CPU reference or CUDA kernel) when the op
library is available, else through plain torch (same math).
"""
from __future__ import annotations

import math

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from moebal import _core


def _err(msg: str) -> Exception:
    return _core.MoebalValueError(msg)


@dataclass
class Prediction:
    """``topk_ids`` int32 [T, k] (decreasing score), ``scores`` float32 [T, k] (softmax
    probabilities of the chosen experts), ``counts`` int32 [E] (predicted tokens per expert)."""

    topk_ids: Any
    scores: Any
    counts: Any


def routers_from_model(model: Any) -> list[tuple[Any, Any]]:
    """``[(weight [E, H], bias [E] or None), ...]`` of every MoE router of a transformers model,
    in layer order (detached float32 copies)."""
    from moebal.capture import find_routers

    out = []
    for _, _, mod in find_routers(model):
        b = getattr(mod, "bias", None)
        out.append((mod.weight.detach().float().clone(), None if b is None else b.detach().float().clone()))
    return out


def _op_available(device: Any) -> bool:
    """The probe_predict op is loadable and has a kernel for ``device``."""
    try:
        from moebal import ops

        ops.load_library()
        return device.type == "cpu" or (device.type == "cuda" and ops.has_cuda_kernels())
    except Exception:
        return False


def _predict_torch(hidden, w_cat, bias, w2, E: int, k: int):
    import torch

    x = hidden @ w_cat.t()
    logits = x[:, :E].float()
    if bias is not None:
        logits = logits + bias
    if w2.shape[1] > 0:
        logits = logits + (torch.nn.functional.silu(x[:, E:]) @ w2.t()).float()
    probs = torch.softmax(logits, dim=-1)
    scores, ids = torch.topk(probs, k, dim=-1)
    counts = torch.bincount(ids.reshape(-1), minlength=E).int()
    return logits, ids.int(), scores, counts


class _Predictor:
    """Shared inference path: per source layer a (w_cat, bias, w2) triple, double-buffered."""

    def __init__(self, routers: Sequence[tuple[Any, Any]], top_k: int, residual_dim: int, *, dtype: Any = None,
                 device: Any = None, use_op: bool | None = None, seed: int = 0):
        import torch

        if len(routers) < 2:
            raise _err(f"predictor: needs at least 2 MoE layers, got {len(routers)}")
        W0 = torch.as_tensor(routers[0][0])
        self.num_experts, self.hidden_size = int(W0.shape[0]), int(W0.shape[1])
        for l, (w, b) in enumerate(routers):
            w = torch.as_tensor(w)
            if tuple(w.shape) != (self.num_experts, self.hidden_size):
                raise _err(f"predictor: router {l} weight has shape {tuple(w.shape)}, layer 0 has "
                           f"{(self.num_experts, self.hidden_size)} (mismatched hidden size or expert count)")
            if b is not None and tuple(torch.as_tensor(b).shape) != (self.num_experts,):
                raise _err(f"predictor: router {l} bias has shape {tuple(torch.as_tensor(b).shape)}, expected ({self.num_experts},)")
        if not 1 <= top_k <= self.num_experts:
            raise _err(f"predictor: top_k must be in [1, {self.num_experts}], got {top_k}")
        self.num_layers = len(routers)
        self.top_k = int(top_k)
        self.residual_dim = int(residual_dim)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype if dtype is not None else torch.float32
        self.use_op = _op_available(self.device) if use_op is None else use_op
        self.routers = [(torch.as_tensor(w).float().to(self.device), None if b is None else torch.as_tensor(b).float().to(self.device))
                        for w, b in routers]
        g = torch.Generator().manual_seed(seed)
        D, H, E = self.residual_dim, self.hidden_size, self.num_experts
        # Trainable residual parameters (float32 masters), per source layer l -> target l + 1.
        self.w1 = [(torch.rand(D, H, generator=g) * 2 - 1).mul_(H ** -0.5).to(self.device) for _ in range(self.num_layers - 1)]
        self.w2 = [torch.zeros(E, D, device=self.device) for _ in range(self.num_layers - 1)]
        self._bufs = [[self._pack(l) for l in range(self.num_layers - 1)] for _ in range(2)]
        self._active = [0] * (self.num_layers - 1)
        self._publish_lock = threading.Lock()

    def _pack(self, l: int) -> tuple[Any, Any, Any]:
        import torch

        W, b = self.routers[l + 1]
        w_cat = torch.cat([W, self.w1[l]], 0).to(self.dtype).contiguous()
        return w_cat, b, self.w2[l].to(self.dtype).contiguous()

    def _check(self, layer: int, hidden: Any) -> None:
        if not 0 <= layer < self.num_layers - 1:
            raise _err(f"predict: layer must be in [0, {self.num_layers - 1}) (predicts layer + 1), got {layer}")
        if hidden.dim() != 2 or hidden.shape[1] != self.hidden_size:
            raise _err(f"predict: hidden must be [tokens, {self.hidden_size}], got {tuple(hidden.shape)} (mismatched hidden size)")

    def logits(self, layer: int, hidden: Any) -> Any:
        """Predicted router logits of layer ``layer + 1`` (float32 [T, E])."""
        return self._run(layer, hidden, self.top_k)[0]

    def _run(self, layer: int, hidden: Any, k: int):
        import torch

        hidden = torch.as_tensor(hidden)
        self._check(layer, hidden)
        w_cat, b, w2 = self._bufs[self._active[layer]][layer]  # one read: a concurrent publish flips after
        h = hidden.to(device=w_cat.device, dtype=self.dtype).contiguous()
        if self.use_op:
            from moebal.predictor_ops import probe_predict

            return probe_predict(h, w_cat, b, w2, self.num_experts, k)
        return _predict_torch(h, w_cat, b, w2, self.num_experts, k)

    def predict(self, layer: int, hidden: Any, k: int | None = None) -> Prediction:
        """Routing of MoE layer ``layer + 1`` predicted from ``hidden`` [T, H] entering layer ``layer``."""
        _, ids, scores, counts = self._run(layer, hidden, self.top_k if k is None else int(k))
        return Prediction(ids, scores, counts)

    def publish(self, layer: int, w1: Any, w2: Any) -> None:
        """Install new residual weights for ``layer`` without stopping inference: write the inactive
        buffer (on a side stream on CUDA, synchronised before the flip), then flip the active index."""
        import torch

        with self._publish_lock:
            nxt = 1 - self._active[layer]
            w_cat, b, w2_buf = self._bufs[nxt][layer]
            E = self.num_experts
            if tuple(w1.shape) != tuple(w_cat[E:].shape) or tuple(w2.shape) != tuple(w2_buf.shape):
                raise _err(f"publish: layer {layer}: w1 {tuple(w1.shape)} / w2 {tuple(w2.shape)} do not match "
                           f"{tuple(w_cat[E:].shape)} / {tuple(w2_buf.shape)}")
            with torch.no_grad():
                if w_cat.is_cuda:
                    s = torch.cuda.Stream(device=w_cat.device)
                    s.wait_stream(torch.cuda.current_stream(w_cat.device))
                    with torch.cuda.stream(s):
                        w_cat[E:].copy_(w1, non_blocking=True)
                        w2_buf.copy_(w2, non_blocking=True)
                    s.synchronize()
                else:
                    w_cat[E:].copy_(w1)
                    w2_buf.copy_(w2)
            self._active[layer] = nxt


class NextGatePredictor(_Predictor):
    """Apply layer ``l+1``'s router to the hidden state entering layer ``l``."""

    def __init__(self, routers: Sequence[tuple[Any, Any]], top_k: int, **kw: Any):
        super().__init__(routers, top_k, 0, **kw)


class ProbePredictor(_Predictor):
    """Frozen next-layer router + zero-initialised residual MLP (SiLU), distilled from the true router."""

    def __init__(self, routers: Sequence[tuple[Any, Any]], top_k: int, residual_dim: int = 512, **kw: Any):
        if residual_dim <= 0:
            raise _err(f"ProbePredictor: residual_dim must be positive, got {residual_dim}")
        super().__init__(routers, top_k, residual_dim, **kw)

    def target_logits(self, layer: int, hidden_next: Any) -> Any:
        """True router logits of MoE layer ``layer + 1`` from the hidden state entering it."""
        W, b = self.routers[layer + 1]
        x = hidden_next.to(W.device).float() @ W.t()
        return x if b is None else x + b

    def fit(self, layer: int, hidden: Any, hidden_next: Any, *, steps: int = 300, batch: int = 4096,
            lr: float = 2e-3, weight_decay: float = 0.0, seed: int = 0,
            min_lr_frac: float = 1.0) -> list[float]:
        """Offline distillation for ``layer``: ``hidden`` [T, H] entering layer ``layer``, ``hidden_next``
        [T, H] entering layer ``layer + 1`` (same tokens). Adam on (W1, W2), cross-entropy against
        softmax of the true layer-``l+1`` router logits. ``min_lr_frac`` < 1 decays the learning rate
        along a cosine from ``lr`` to ``lr * min_lr_frac`` over the ``steps`` (1.0: constant).
        Publishes the result; returns the losses."""
        import torch

        h = torch.as_tensor(hidden)
        hn = torch.as_tensor(hidden_next)
        self._check(layer, h)
        self._check(layer, hn)
        if h.shape[0] != hn.shape[0]:
            raise _err(f"fit: hidden has {h.shape[0]} tokens, hidden_next {hn.shape[0]}")
        if not 0.0 <= min_lr_frac <= 1.0:
            raise _err(f"fit: min_lr_frac must be in [0, 1], got {min_lr_frac}")
        trainer = _ResidualTrainer(self, layer, lr=lr, weight_decay=weight_decay)
        g = torch.Generator().manual_seed(seed)
        T = h.shape[0]
        losses = []
        with torch.no_grad():
            target_all = torch.softmax(self.target_logits(layer, hn), -1)
        for i in range(steps):
            if min_lr_frac < 1.0:
                frac = min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * i / max(1, steps)))
                for group in trainer.opt.param_groups:
                    group["lr"] = lr * frac
            idx = torch.randint(0, T, (min(batch, T),), generator=g)
            losses.append(trainer.step(h[idx.to(h.device)], target_all[idx.to(target_all.device)]))
        trainer.commit()
        return losses


class _ResidualTrainer:
    """Adam on a shadow copy of one layer's (W1, W2); ``commit`` publishes into the predictor."""

    def __init__(self, pred: _Predictor, layer: int, lr: float, weight_decay: float = 0.0):
        import torch

        self.pred, self.layer = pred, layer
        self.w1 = pred.w1[layer].clone().requires_grad_(True)
        self.w2 = pred.w2[layer].clone().requires_grad_(True)
        W, b = pred.routers[layer + 1]
        self.W, self.b = W, b
        self.opt = torch.optim.AdamW([self.w1, self.w2], lr=lr, weight_decay=weight_decay)

    def step(self, h: Any, target_probs: Any) -> float:
        import torch

        h = h.to(self.W.device).float()
        logits = h @ self.W.t() + torch.nn.functional.silu(h @ self.w1.t()) @ self.w2.t()
        if self.b is not None:
            logits = logits + self.b
        loss = -(target_probs.to(logits.device) * torch.log_softmax(logits, -1)).sum(-1).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def commit(self) -> None:
        with self.pred._publish_lock:
            self.pred.w1[self.layer] = self.w1.detach().clone()
            self.pred.w2[self.layer] = self.w2.detach().clone()
        self.pred.publish(self.layer, self.pred.w1[self.layer].to(self.pred.dtype), self.pred.w2[self.layer].to(self.pred.dtype))


class OnlineProbeTrainer:
    """Online distillation from a live stream: :meth:`observe` feeds (hidden entering layer l,
    hidden entering layer l+1) of served tokens into a per-layer ring buffer; :meth:`update` runs a
    few Adam steps on the buffer and publishes (double-buffered swap, inference keeps running, also
    from other threads). Call ``update`` every N steps, or from a background thread."""

    def __init__(self, pred: ProbePredictor, *, capacity: int = 16384, lr: float = 1e-3, steps_per_update: int = 20,
                 batch: int = 2048, seed: int = 0):
        import torch

        self.pred = pred
        self.capacity, self.steps_per_update, self.batch = int(capacity), int(steps_per_update), int(batch)
        L, H, E = pred.num_layers - 1, pred.hidden_size, pred.num_experts
        self._h = [torch.zeros(self.capacity, H, device=pred.device) for _ in range(L)]
        self._p = [torch.zeros(self.capacity, E, device=pred.device) for _ in range(L)]
        self._n = [0] * L
        self._pos = [0] * L
        self._trainers = [_ResidualTrainer(pred, l, lr=lr) for l in range(L)]
        self._g = torch.Generator().manual_seed(seed)
        self.updates = 0

    def observe(self, layer: int, hidden: Any, hidden_next: Any) -> None:
        import torch

        with torch.no_grad():
            p = torch.softmax(self.pred.target_logits(layer, hidden_next), -1)
            h = hidden.to(self.pred.device).float()
            n = h.shape[0]
            if n >= self.capacity:
                h, p, n = h[-self.capacity:], p[-self.capacity:], self.capacity
            i = self._pos[layer]
            first = min(n, self.capacity - i)
            self._h[layer][i:i + first] = h[:first]
            self._p[layer][i:i + first] = p[:first]
            if first < n:
                self._h[layer][:n - first] = h[first:]
                self._p[layer][:n - first] = p[first:]
            self._pos[layer] = (i + n) % self.capacity
            self._n[layer] = min(self.capacity, self._n[layer] + n)

    def update(self, layers: Sequence[int] | None = None) -> dict[int, float]:
        import torch

        out = {}
        for l in (range(self.pred.num_layers - 1) if layers is None else layers):
            n = self._n[l]
            if n == 0:
                continue
            tr = self._trainers[l]
            for _ in range(self.steps_per_update):
                idx = torch.randint(0, n, (min(self.batch, n),), generator=self._g).to(self.pred.device)
                out[l] = tr.step(self._h[l][idx], self._p[l][idx])
            tr.commit()
        self.updates += 1
        return out


# ----------------------------------------------------------------------------------------------
# Metrics (numpy; PROBE's definitions as read in seed-papers.md section 1.3)

def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """m[t, i] = a[t, i] is in b[t, :]."""
    return (a[:, :, None] == b[:, None, :]).any(-1)


def topk_accuracy(pred_ids: Any, true_ids: Any) -> float:
    """Mean over tokens of |pred top-K ∩ true top-K| / K."""
    p, t = _np(pred_ids), _np(true_ids)
    if p.shape != t.shape or p.ndim != 2:
        raise _err(f"topk_accuracy: pred {p.shape} and true {t.shape} must both be [tokens, K]")
    return float(_member(t, p).mean())


def top_half_k_hit(pred_ids: Any, true_ids: Any, true_weights: Any) -> float:
    """Fraction of each token's true top-ceil(K/2) experts (by gate weight) inside the predicted top-K."""
    p, t, w = _np(pred_ids), _np(true_ids), _np(true_weights)
    K = t.shape[1]
    h = (K + 1) // 2
    order = np.argsort(-w, axis=1, kind="stable")[:, :h]
    top = np.take_along_axis(t, order, 1)
    return float(_member(top, p).mean())


def recall_2k(pred_ids_2k: Any, true_ids: Any) -> float:
    """|true top-K ∩ predicted top-2K| / K, averaged over tokens."""
    p, t = _np(pred_ids_2k), _np(true_ids)
    if p.shape[1] != 2 * t.shape[1]:
        raise _err(f"recall_2k: predicted ids must be [tokens, 2K] = [*, {2 * t.shape[1]}], got {p.shape}")
    return float(_member(t, p).mean())


def count_l1(pred_counts: Any, true_counts: Any) -> float:
    """Relative L1 error of per-expert counts: sum |n̂ - n| / sum n."""
    p, t = _np(pred_counts).astype(np.float64), _np(true_counts).astype(np.float64)
    if p.shape != t.shape:
        raise _err(f"count_l1: shapes differ: {p.shape} vs {t.shape}")
    return float(np.abs(p - t).sum() / max(t.sum(), 1.0))


def true_counts(true_ids: Any, num_experts: int) -> np.ndarray:
    t = _np(true_ids).reshape(-1)
    return np.bincount(t[t >= 0], minlength=num_experts)


def evaluate(pred: _Predictor, layer: int, hidden: Any, true_ids: Any, true_weights: Any,
             batch_tokens: int | None = None) -> dict[str, float]:
    """All four metrics for one source layer: ``hidden`` enters layer ``layer``; ``true_ids`` /
    ``true_weights`` [T, K] are layer ``layer + 1``'s actual routing. Counts are compared per batch of
    ``batch_tokens`` tokens (the planner's window; default: all tokens) and averaged."""
    t_ids, t_w = _np(true_ids), _np(true_weights)
    K = t_ids.shape[1]
    pr2 = pred.predict(layer, hidden, k=2 * K)
    ids2 = _np(pr2.topk_ids)
    ids = ids2[:, :K]
    T = ids.shape[0]
    bt = T if batch_tokens is None else int(batch_tokens)
    errs = []
    for s in range(0, T, bt):
        e = slice(s, min(T, s + bt))
        errs.append(count_l1(np.bincount(ids[e].reshape(-1), minlength=pred.num_experts),
                             true_counts(t_ids[e], pred.num_experts)))
    return {"topk_acc": topk_accuracy(ids, t_ids), "top_half_hit": top_half_k_hit(ids, t_ids, t_w),
            "recall_2k": recall_2k(ids2, t_ids), "count_l1": float(np.mean(errs))}
