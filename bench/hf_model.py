"""A whole Hugging Face MoE model with moebal's experts against transformers' own (one GPU).

Runs the base model (no LM head) of a transformers MoE model in bfloat16 with each experts
implementation in turn (transformers' ``eager`` per-expert loop and ``grouped_mm``, and
``moebal`` from :mod:`moebal.hf_experts`), in interleaved rounds in one process, and reports per
token count:
  * the forward time (CUDA events, median of the rounds);
  * the time inside the experts modules (CUDA events recorded by forward hooks on every experts
    module, summed over layers): the part an experts implementation replaces;
  * moebal's experts output against grouped_mm's on the same inputs (each experts module's
    inputs recorded in a grouped_mm forward; relative Frobenius error, worst module), and the
    routing imbalance of the input (max/mean tokens per expert, mean over layers).
The model runs eagerly (no CUDA graph), so at small token counts the times include the host's
launch gaps: an implementation that launches fewer kernels per layer gains there too.

Models: ``qwen3-30b-a3b:L`` and ``mixtral-8x7b:L`` (the published shapes, L layers, random weights:
near-uniform routing), or ``path:DIR`` (a saved model, e.g. moebal's reference MoE; with
``--corpus corpus.npz --domain D`` its inputs are windows of real held-out text, so the routing
is the model's real, skewed one).

  python bench/hf_model.py --model qwen3-30b-a3b:4 --json out.json
  python bench/hf_model.py --model path:/tmp/refmoe/model --corpus data/corpus.npz --domain python
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

IMPLS = ("eager", "grouped_mm", "moebal")
PRESETS = {
    # name: (config class, config keyword arguments)
    "qwen3-30b-a3b": ("Qwen3MoeConfig", dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                                             num_experts=128, num_experts_per_tok=8, num_attention_heads=32,
                                             num_key_value_heads=4, head_dim=128, vocab_size=32000,
                                             norm_topk_prob=True)),
    "mixtral-8x7b": ("MixtralConfig", dict(hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                                           num_experts_per_tok=2, num_attention_heads=32, num_key_value_heads=8,
                                           vocab_size=32000)),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="qwen3-30b-a3b:L, mixtral-8x7b:L or path:DIR")
    ap.add_argument("--tokens", default="16,128,1024,4096,16384",
                    help="token counts per forward (sequences of --seq tokens, or one shorter sequence)")
    ap.add_argument("--seq", type=int, default=512, help="sequence length for token counts above it")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--corpus", default=None, help="corpus.npz of the reference MoE (real token ids)")
    ap.add_argument("--domain", default="python", help="held-out stream of --corpus to read")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    impls = [s for s in args.impls.split(",") if s]
    bad = [s for s in impls if s not in IMPLS]
    if bad or not impls:
        ap.error(f"--impls: unknown {bad}; choose from {list(IMPLS)}")
    args.impls = impls
    try:
        args.tokens = [int(s) for s in args.tokens.split(",") if s]
    except ValueError:
        ap.error(f"--tokens must be comma-separated integers, got {args.tokens!r}")
    if not args.tokens or min(args.tokens) < 1:
        ap.error("--tokens must list positive token counts")
    if args.seq < 1:
        ap.error("--seq must be positive")
    kind, _, rest = args.model.partition(":")
    if kind == "path":
        if not rest:
            ap.error("--model path:DIR needs a directory")
    elif kind in PRESETS:
        if not rest.isdigit() or int(rest) < 1:
            ap.error(f"--model {kind}:L needs a positive layer count, got {rest!r}")
    else:
        ap.error(f"--model: unknown {kind!r}; use one of {sorted(PRESETS)} with :L, or path:DIR")
    return args


def build_model(spec: str):
    import transformers

    kind, _, rest = spec.partition(":")
    if kind == "path":
        model = transformers.AutoModel.from_pretrained(rest, dtype=torch.bfloat16)
    else:
        cls, kw = PRESETS[kind]
        cfg = getattr(transformers, cls)(**kw, num_hidden_layers=int(rest))
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = transformers.AutoModel.from_config(cfg, dtype=torch.bfloat16)
    return model.cuda().eval()


def input_ids(n: int, seq: int, vocab: int, corpus, domain: str, gen: torch.Generator) -> torch.Tensor:
    rows, cols = (1, n) if n <= seq else ((n + seq - 1) // seq, seq)
    if corpus is None:
        return torch.randint(0, vocab, (rows, cols), generator=gen)
    import numpy as np

    stream = np.load(corpus)[f"{domain}_heldout"]
    need = rows * cols
    if stream.size < need:
        raise SystemExit(f"{corpus}: {domain}_heldout has {stream.size} tokens, {need} needed")
    start = stream.size // 2 - need // 2 if stream.size >= 2 * need else 0
    return torch.from_numpy(stream[start:start + need].astype("int64")).view(rows, cols)


class ExpertsTimer:
    """CUDA events around every experts module's forward; summed per model forward."""

    def __init__(self, modules):
        self.pairs = []
        self.handles = []
        self.enabled = True
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, mod, args):
        if not self.enabled:
            return
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self.pairs.append([ev, None])

    def _post(self, mod, args, out):
        if not self.enabled:
            return
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self.pairs[-1][1] = ev

    def take_ms(self) -> float:
        torch.cuda.synchronize()
        ms = sum(a.elapsed_time(b) for a, b in self.pairs)
        self.pairs = []
        return ms


def graph_ms(model, ids, impl: str, rounds: int):
    """Median ms of a CUDA-graph replay of the forward (no host launch gaps), or None when the
    forward cannot be captured (e.g. transformers' eager loop synchronises with the host)."""
    model.set_experts_implementation(impl)
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model(ids, use_cache=False)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):  # torch's default capture stream may be another device's
            model(ids, use_cache=False)
    except Exception as e:  # noqa: BLE001 - any capture failure means "not capturable"
        torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del g
    return statistics.median(times), None


def experts_rel_err(model, experts, ids) -> float:
    """Worst relative error of moebal's experts output against grouped_mm's, on the inputs every
    experts module receives in a grouped_mm forward of ids."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    from moebal import hf_experts

    calls = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: calls.append((mod, a))) for m in experts]
    model.set_experts_implementation("grouped_mm")
    model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    grouped_mm = ALL_EXPERTS_FUNCTIONS["grouped_mm"]
    worst = 0.0
    for mod, a in calls:
        ref = grouped_mm(mod, *a).double()
        got = hf_experts.experts_forward(mod, *a).double()
        worst = max(worst, ((got - ref).norm() / ref.norm()).item())
    return worst


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("hf_model: needs a CUDA device", file=sys.stderr)
        return 2
    from moebal import hf_experts, ops

    if "moebal" in args.impls and not ops.has_cuda_kernels():
        print("hf_model: this moebal has no CUDA kernels", file=sys.stderr)
        return 2
    hf_experts.register()
    model = build_model(args.model)
    cfg = model.config
    experts = hf_experts.experts_modules(model)
    if "moebal" in args.impls:
        reason = next((r for r in map(hf_experts.unsupported_reason, experts) if r), None)
        if reason:
            print(f"hf_model: {reason}", file=sys.stderr)
            return 2
    routers = [m for m in model.modules() if type(m).__name__.endswith("TopKRouter")]
    timer = ExpertsTimer(experts)
    gen = torch.Generator().manual_seed(1)
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": args.model,
            "model_type": cfg.model_type, "layers": cfg.num_hidden_layers, "experts_modules": len(experts),
            "hidden": cfg.hidden_size, "corpus": args.corpus, "domain": args.domain if args.corpus else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds,
            "argv": sys.argv[1:] if argv is None else argv}
    import transformers

    meta["transformers"] = transformers.__version__
    rows = []
    for n in args.tokens:
        ids = input_ids(n, args.seq, cfg.vocab_size, args.corpus, args.domain, gen).cuda()
        # the routing of this input: max/mean tokens per expert, mean over the MoE layers
        counts = []
        hooks = [r.register_forward_hook(lambda m, a, o: counts.append(
            torch.bincount(o[-1].flatten(), minlength=m.num_experts).float())) for r in routers]
        with torch.no_grad():
            for impl in args.impls:  # warm-up; the routing counts come from the first
                model.set_experts_implementation(impl)
                model(ids, use_cache=False)
                if impl == args.impls[0]:
                    for h in hooks:
                        h.remove()
            err = None
            if "moebal" in args.impls and "grouped_mm" in args.impls:
                err = experts_rel_err(model, experts, ids)
            timer.take_ms()
            fwd = {i: [] for i in args.impls}
            exp = {i: [] for i in args.impls}
            for _ in range(args.rounds):
                for impl in args.impls:
                    model.set_experts_implementation(impl)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(ids, use_cache=False)
                    end.record()
                    exp[impl].append(timer.take_ms())
                    fwd[impl].append(start.elapsed_time(end))
            graph, graph_err = {}, {}
            timer.enabled = False
            for impl in args.impls:
                if impl == "eager":
                    continue  # its per-expert loop reads the routing on the host
                graph[impl], graph_err[impl] = graph_ms(model, ids, impl, args.rounds)
            timer.enabled = True
        imb = statistics.mean((c.max() / c.mean()).item() for c in counts) if counts else float("nan")
        row = {"tokens": int(ids.numel()), "shape": list(ids.shape), "expert_max_over_mean": imb,
               "forward_ms": {i: statistics.median(v) for i, v in fwd.items()},
               "experts_ms": {i: statistics.median(v) for i, v in exp.items()},
               "graph_forward_ms": graph, "graph_errors": {k: v for k, v in graph_err.items() if v}}
        if err is not None:
            row["experts_rel_err_vs_grouped_mm"] = err
        rows.append(row)
        print(render_row(row, args.impls), flush=True)
    res = {"meta": meta, "rows": rows}
    print(render_md(res, args.impls))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def render_row(r, impls) -> str:
    f = " ".join(f"{i} {r['forward_ms'][i]:.3f}/{r['experts_ms'][i]:.3f}" for i in impls)
    g = " ".join(f"{i} {_ms(v)}" for i, v in r.get("graph_forward_ms", {}).items())
    return f"tokens {r['tokens']}: forward/experts ms {f}; graph forward ms {g}"


def graph_cells(g) -> str:
    a, b = g.get("grouped_mm"), g.get("moebal")
    ratio = f"{a / b:.2f}x" if a is not None and b is not None else "-"
    return f"{_ms(a)} / {_ms(b)} | {ratio}"


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_md(res, impls) -> str:
    m = res["meta"]
    out = [f"{m['model']} ({m['model_type']}, {m['layers']} layers, hidden {m['hidden']}), {m['device']}, "
           f"torch {m['torch']}, transformers {m['transformers']}, {m['date']}; median of {m['rounds']} rounds",
           "",
           "| tokens | expert max/mean | " + " | ".join(f"forward ms {i}" for i in impls) + " | "
           + " | ".join(f"experts ms {i}" for i in impls) + " | experts: grouped_mm / moebal | forward: "
           "grouped_mm / moebal | graph forward ms grouped_mm / moebal | graph forward: grouped_mm / moebal "
           "| experts output vs grouped_mm (rel. error, worst layer) |",
           "|" + "---|" * (2 * len(impls) + 7)]
    for r in res["rows"]:
        fw, ex = r["forward_ms"], r["experts_ms"]
        both = "moebal" in fw and "grouped_mm" in fw
        out.append(f"| {r['tokens']} | {r['expert_max_over_mean']:.2f} | "
                   + " | ".join(f"{fw[i]:.3f}" for i in impls) + " | "
                   + " | ".join(f"{ex[i]:.3f}" for i in impls) + " | "
                   + (f"{ex['grouped_mm'] / ex['moebal']:.2f}x | {fw['grouped_mm'] / fw['moebal']:.2f}x | "
                      + graph_cells(r.get("graph_forward_ms", {}))
                      + f" | {r['experts_rel_err_vs_grouped_mm']:.2e} |" if both else "- | - | - | - | - |"))
    errs = {(r["tokens"], k): v for r in res["rows"] for k, v in r.get("graph_errors", {}).items()}
    out += [f"\nnot capturable: {impl} at {t} tokens: {e}" for (t, impl), e in errs.items()]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
