"""What limits the lookahead predictor on the reference MoE? Fits, per source layer l -> l + 1, five
predictors of layer l+1's routing on the same tokens and the same recipe, and prints their held-out
Top-K accuracy:

- ``next_gate``: layer l+1's router on x_l, the hidden state entering layer l's MoE block.
- ``probe``: that plus the residual MLP SiLU(W1 x_l) W2 (moebal's ProbePredictor, D wide).
- ``probe+gate_l``: the residual also sees layer l's own routing (known when the predictor runs,
  since layer l's router has just run on x_l): SiLU(W1 x_l + U g_l) W2, where g_l [E] holds layer
  l's top-k gate weights and zeros elsewhere. This tests whether the predictor lacks the
  information of which experts layer l picked.
- ``skip_attn`` and ``skip_attn+probe``: layer l+1's router (and a residual MLP) on
  post_attention_layernorm_{l+1}(s_{l+1}), where s_{l+1} is the residual stream entering decoder
  layer l+1. That is everything layer l's MoE adds, with only layer l+1's attention missing. These
  two are diagnostics, not lookahead predictors, because they need layer l's MoE output. They show
  how much of the gap to the true routing is layer l+1's attention, which no per-token predictor
  working from layer l can see.

Usage: python feature_study.py --corpus DIR --model DIR [--n-fit 384] [--steps 3000] [--dim 256]
       [--json out.json] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_eval import DOMAINS, random_windows, windows  # noqa: E402

from moebal.capture import MemorySink, RoutingRecorder  # noqa: E402
from moebal.predict import routers_from_model, topk_accuracy  # noqa: E402

VARIANTS = ("next_gate", "probe", "probe+gate_l", "skip_attn", "skip_attn+probe")


def decoder_layers(model):
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no .model.layers to hook")
    return layers


@torch.no_grad()
def capture(model, ids: torch.Tensor, batch: int, device) -> dict:
    """Per layer: x (router input), topk ids/weights, and z = post_attention_layernorm_l(residual
    stream entering decoder layer l), all [tokens, ...] in (batch, sequence) order."""
    layers = decoder_layers(model)
    sink = MemorySink(keep_torch=True)
    z = {l: [] for l in range(len(layers))}

    def pre_hook(l):
        def fn(mod, args, kwargs):
            s = args[0] if args else kwargs["hidden_states"]
            z[l].append(mod.post_attention_layernorm(s).reshape(-1, s.shape[-1]).to(torch.float16))
        return fn

    handles = [layer.register_forward_pre_hook(pre_hook(l), with_kwargs=True) for l, layer in enumerate(layers)]
    try:
        with RoutingRecorder(model, sink, store_hidden=True, to_numpy=False, hidden_dtype=torch.float16):
            for s in range(0, ids.shape[0], batch):
                model(input_ids=ids[s:s + batch].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    L = len(sink.hidden)
    if L != len(layers):
        raise ValueError(f"{L} MoE layers but {len(layers)} decoder layers: the study needs every layer to be MoE")
    return {"x": [sink.cat("hidden", l, release=True) for l in range(L)],
            "ids": [sink.cat("topk_ids", l, release=True) for l in range(L)],
            "w": [sink.cat("topk_weights", l, release=True) for l in range(L)],
            "z": [torch.cat(z[l]) for l in range(L)]}


def gate_vector(ids: torch.Tensor, w: torch.Tensor, E: int) -> torch.Tensor:
    g = torch.zeros(ids.shape[0], E, device=ids.device)
    return g.scatter_(1, ids.long(), w.float())


class Head(torch.nn.Module):
    """Frozen router W (+ b) on the gate input, plus an optional zero-initialised residual
    SiLU(W1 f + U g) W2 (U only with gate features)."""

    def __init__(self, W, b, H: int, E: int, D: int, gate: bool, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W, self.b = W, b
        self.D = D
        if D:
            self.w1 = torch.nn.Parameter(((torch.rand(D, H, generator=gen) * 2 - 1) * H ** -0.5).to(W.device))
            self.w2 = torch.nn.Parameter(torch.zeros(E, D, device=W.device))
            self.u = torch.nn.Parameter(((torch.rand(D, E, generator=gen) * 2 - 1)).to(W.device)) if gate else None

    def forward(self, x, g=None):
        x = x.float()
        out = x @ self.W.t()
        if self.b is not None:
            out = out + self.b
        if self.D:
            a = x @ self.w1.t()
            if self.u is not None:
                a = a + g @ self.u.t()
            out = out + torch.nn.functional.silu(a) @ self.w2.t()
        return out


def fit(head: Head, x, g, target, steps: int, batch: int = 4096, lr: float = 2e-3, min_lr_frac: float = 0.05,
        seed: int = 0) -> None:
    """ProbePredictor.fit's recipe: AdamW, cosine learning rate, cross-entropy to the true router's
    softmax."""
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        return
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    T = x.shape[0]
    for i in range(steps):
        frac = min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * i / max(1, steps)))
        for group in opt.param_groups:
            group["lr"] = lr * frac
        idx = torch.randint(0, T, (min(batch, T),), generator=gen).to(x.device)
        logits = head(x[idx], None if g is None else g[idx])
        loss = -(target[idx] * torch.log_softmax(logits, -1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def inputs(variant: str, data: dict, l: int, E: int):
    """(router input, residual input, gate features) of ``variant`` for source layer ``l``."""
    if variant.startswith("skip_attn"):
        return data["z"][l + 1], None
    g = gate_vector(data["ids"][l], data["w"][l], E) if variant == "probe+gate_l" else None
    return data["x"][l], g


def study(routers, fitset: dict, evalsets: dict, E: int, K: int, D: int, steps: int, log=print,
          variants=VARIANTS) -> dict:
    L = len(routers)
    H = int(routers[0][0].shape[1])
    acc = {v: {d: [] for d in evalsets} for v in variants}
    for l in range(L - 1):
        W, b = routers[l + 1]
        with torch.no_grad():
            tl = fitset["x"][l + 1].float() @ W.t()
            target = torch.softmax(tl if b is None else tl + b, -1)
        for v in variants:
            head = Head(W, b, H, E, D if v in ("probe", "probe+gate_l", "skip_attn+probe") else 0,
                        v == "probe+gate_l", seed=l)
            x, g = inputs(v, fitset, l, E)
            fit(head, x, g, target, steps, seed=l)
            with torch.no_grad():
                for d, es in evalsets.items():
                    xe, ge = inputs(v, es, l, E)
                    pred = torch.topk(head(xe, ge), K, -1).indices
                    acc[v][d].append(topk_accuracy(pred, es["ids"][l + 1]))
        log(f"layer {l} -> {l + 1}: " + ", ".join(f"{v} {np.mean([acc[v][d][-1] for d in evalsets]):.3f}" for v in variants))
    return {v: {d: float(np.mean(a)) for d, a in per.items()} for v, per in acc.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-fit", type=int, default=384, help="training sequences per domain")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=256, help="residual width D")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true", help="a few short sequences (a logic check on CPU)")
    args = ap.parse_args(argv)
    if args.n_fit < 1 or args.steps < 1 or args.dim < 1:
        ap.error("--n-fit, --steps and --dim must be positive")
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in VARIANTS for v in variants):
        ap.error(f"--variants: a comma-separated subset of {', '.join(VARIANTS)}, got {args.variants!r}")
    import transformers

    t0 = time.time()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    z = np.load(os.path.join(args.corpus, "corpus.npz"), allow_pickle=False)
    dtype = torch.bfloat16 if dev.type != "cpu" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(dev).eval()
    cfg = model.config
    E, K = cfg.num_experts, cfg.num_experts_per_tok
    S, n_eval, batch = (512, 64, 16) if not args.tiny else (32, 2, 2)
    n_fit = args.n_fit
    evalsets = {}
    for d in DOMAINS:  # run_eval's held-out set: the second half of each domain's held-out stream
        st = z[f"{d}_heldout"]
        evalsets[d] = capture(model, windows(st, n_eval, S, offset=st.size // 2), batch, dev)
    rng = np.random.default_rng(7)
    fit_ids = torch.cat([random_windows(z[f"{d}_train"], n_fit, S, rng) for d in DOMAINS])
    fitset = capture(model, fit_ids, batch, dev)
    print(f"captured: fit {fit_ids.numel()} tokens, eval {len(DOMAINS)} x {n_eval * S} ({time.time() - t0:.0f}s)", flush=True)
    routers = [(torch.as_tensor(w).float().to(dev), None if bb is None else torch.as_tensor(bb).float().to(dev))
               for w, bb in routers_from_model(model)]
    res = study(routers, fitset, evalsets, E, K, args.dim, args.steps if not args.tiny else 20, variants=variants)
    print(f"\nTop-K accuracy (%), mean over {len(routers) - 1} source layers; D={args.dim}, {n_fit} fit sequences "
          f"per domain, {args.steps} steps")
    print("| predictor | mean | " + " | ".join(DOMAINS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in DOMAINS) + " |")
    for v, per in res.items():
        print(f"| {v} | {100 * np.mean(list(per.values())):.1f} | " + " | ".join(f"{100 * per[d]:.1f}" for d in DOMAINS) + " |")
    print(f"done in {time.time() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"top_k_accuracy": res, "dim": args.dim, "n_fit": n_fit, "steps": args.steps,
                       "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                       "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
