"""Benchmarks of the MoE data path (torch.ops.moebal) on one GPU.

Measures, in one process and on one device:
  * the HBM copy ceiling (1 GiB device-to-device copy, bytes read + written);
  * permute and unpermute+combine throughput (minimum traffic / time) against that ceiling;
  * router + top-k + dispatch layout at decode sizes (CUDA-graph replays, so launch gaps shrink
    to what a graph-captured decode step pays);
  * the whole layer (moe_forward) against a torch-op pipeline (argsort + index_select +
    torch._grouped_mm + SiLU + index_add), both from the same topk_ids/topk_weights, with the
    relative difference of their outputs as a reference check.

Timing: CUDA events around back-to-back calls after warm-up, median of several repetitions;
problems at or below 128 tokens are captured in a CUDA graph of several calls and replayed.

  python bench/kernels_dataplane.py --json $OUT/dataplane.json --md $OUT/dataplane.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from moebal import moe_ops

MODELS = {
    # name: hidden, ffn, experts, top_k
    "Mixtral-8x7B": (4096, 14336, 8, 2),
    "Qwen3-30B-A3B": (2048, 768, 128, 8),
    "DeepSeek-V3": (7168, 2048, 256, 8),
    "GPT-OSS-120B": (2880, 2880, 128, 4),
}
TOKENS = [1, 16, 128, 1024, 4096, 16384]
ROUTINGS = ["balanced", "zipf"]


def time_ms(fn, *, graph: bool, reps: int = 7, inner: int = 10, warmup: int = 2) -> float:
    """Median milliseconds per fn() call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    calls = inner  # fn() calls per timed region
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(inner):
                fn()
        launches = 1  # one replay runs `inner` calls
        run = g.replay
    else:
        launches = inner
        run = fn
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(launches):
            run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def hbm_copy_tbs() -> float:
    n = 1 << 29  # 1 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), graph=False, reps=5, inner=5)
    del src, dst
    return 2 * n * 2 / (ms * 1e-3) / 1e12


def bf16_matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, graph=False, reps=5, inner=5)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def make_ids(t: int, e: int, k: int, routing: str, gen: torch.Generator) -> torch.Tensor:
    if routing == "balanced":
        p = torch.ones(t, e, device="cuda")
    else:  # Zipf(1.2) over a random expert order
        ranks = torch.randperm(e, device="cuda", generator=gen).float() + 1
        p = (1.0 / ranks**1.2).expand(t, e)
    return torch.multinomial(p, k, replacement=False, generator=gen).int()


def torch_pipeline(hidden, ids, weights, w13t, w2t, e):
    """The layer from torch ops, no host synchronisation (counts by index_add, not bincount)."""
    t, k = ids.shape
    flat = ids.flatten().long()
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(e, dtype=torch.int32, device=hidden.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    tok = order // k
    x = hidden.index_select(0, tok)
    h = torch._grouped_mm(x, w13t, offs=offs)
    f = h.shape[1] // 2
    act = torch.nn.functional.silu(h[:, :f]) * h[:, f:]
    y = torch._grouped_mm(act, w2t, offs=offs)
    out = torch.zeros(t, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    out.index_add_(0, tok, y.float() * weights.flatten()[order].unsqueeze(1))
    return out.bfloat16()


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--no-layer", action="store_true", help="skip the whole-layer comparison")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    gen = torch.Generator(device="cuda").manual_seed(0)
    dev = torch.cuda.get_device_name()
    t0 = time.time()
    hbm = hbm_copy_tbs()
    mm = bf16_matmul_tflops()
    print(f"# {dev}; torch {torch.__version__}; HBM copy {hbm:.2f} TB/s; bf16 matmul {mm:.0f} TFLOP/s", flush=True)
    rows = []
    tokens = [int(x) for x in args.tokens.split(",")]
    for name in args.models.split(","):
        h, f, e, k = MODELS[name]
        w13 = torch.randn(e, 2 * f, h, device="cuda", generator=gen, dtype=torch.bfloat16).mul_(h**-0.5)
        w2 = torch.randn(e, h, f, device="cuda", generator=gen, dtype=torch.bfloat16).mul_(f**-0.5)
        w13t, w2t = w13.transpose(1, 2), w2.transpose(1, 2)
        for t in tokens:
            hidden = torch.randn(t, h, device="cuda", generator=gen, dtype=torch.bfloat16)
            logits = torch.randn(t, e, device="cuda", generator=gen)
            for routing in ROUTINGS:
                graph = t <= 128
                ids = make_ids(t, e, k, routing, gen)
                w = torch.rand(t, k, device="cuda", generator=gen)
                w = w / w.sum(1, keepdim=True)
                _, offsets, row, _ = moe_ops.dispatch_layout(ids, e)
                y = torch.randn(t * k, h, device="cuda", generator=gen, dtype=torch.bfloat16)
                r = dict(model=name, tokens=t, routing=routing, hidden=h, ffn=f, experts=e, top_k=k)
                io = (t * h + t * k * h) * 2
                r["permute_us"] = 1e3 * time_ms(lambda: moe_ops.permute(hidden, row), graph=graph)
                r["permute_tbs"] = io / (r["permute_us"] * 1e-6) / 1e12
                r["combine_us"] = 1e3 * time_ms(lambda: moe_ops.unpermute_combine(y, row, w, offsets), graph=graph)
                r["combine_tbs"] = (io + t * k * 8) / (r["combine_us"] * 1e-6) / 1e12
                r["router_us"] = 1e3 * time_ms(lambda: moe_ops.router_topk(logits, k), graph=True)
                r["layout_us"] = 1e3 * time_ms(lambda: moe_ops.dispatch_layout(ids, e), graph=True)

                def route_and_layout():
                    i, _ = moe_ops.router_topk(logits, k)
                    return moe_ops.dispatch_layout(i, e)

                r["router_layout_us"] = 1e3 * time_ms(route_and_layout, graph=True)
                if not args.no_layer:
                    ours = lambda: moe_ops.moe_forward(hidden, w13, w2, topk_ids=ids, topk_weights=w)  # noqa: E731
                    base = lambda: torch_pipeline(hidden, ids, w, w13t, w2t, e)  # noqa: E731
                    reps, inner = (3, 3) if t >= 4096 else (7, 10)
                    try:
                        r["layer_rel_diff"] = rel(ours(), base())
                        r["layer_us"] = 1e3 * time_ms(ours, graph=graph, reps=reps, inner=inner)
                        r["torch_us"] = 1e3 * time_ms(base, graph=graph, reps=reps, inner=inner)
                        r["speedup"] = r["torch_us"] / r["layer_us"]
                    except Exception as exc:  # keep the other rows if one measurement fails
                        r["layer_error"] = repr(exc)[:200]
                        for key in ("layer_rel_diff", "layer_us", "torch_us", "speedup"):
                            r.setdefault(key, float("nan"))
                rows.append(r)
                print(json.dumps({k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in r.items()}), flush=True)
                del y
            del hidden, logits
        del w13, w2, w13t, w2t
        torch.cuda.empty_cache()
    meta = dict(device=dev, torch=torch.__version__, hbm_copy_tbs=hbm, bf16_mm_tflops=mm,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), seconds=time.time() - t0)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    md = render_md(meta, rows, not args.no_layer)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(md)
    print(md)
    return 0


def render_md(meta, rows, layer: bool) -> str:
    out = [f"Device: {meta['device']}, torch {meta['torch']}, {meta['date']}. Measured ceilings in the same run: "
           f"HBM copy {meta['hbm_copy_tbs']:.2f} TB/s, bf16 matmul {meta['bf16_mm_tflops']:.0f} TFLOP/s.", ""]
    head = ("| model | tokens | routing | permute us | permute TB/s (% HBM) | combine us | combine TB/s (% HBM) "
            "| router us | layout us | router+layout us |")
    if layer:
        head += " layer us | torch pipeline us | speedup | rel diff |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    hbm = meta["hbm_copy_tbs"]
    for r in rows:
        line = (f"| {r['model']} | {r['tokens']} | {r['routing']} | {r['permute_us']:.1f} | "
                f"{r['permute_tbs']:.2f} ({100 * r['permute_tbs'] / hbm:.0f}%) | {r['combine_us']:.1f} | "
                f"{r['combine_tbs']:.2f} ({100 * r['combine_tbs'] / hbm:.0f}%) | {r['router_us']:.1f} | "
                f"{r['layout_us']:.1f} | {r['router_layout_us']:.1f} |")
        if layer:
            line += (f" {r['layer_us']:.1f} | {r['torch_us']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['layer_rel_diff']:.1e} |")
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
