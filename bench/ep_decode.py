"""Expert-parallel MoE layers at decode sizes: the eager exchanges of
:func:`moebal.distributed.ep_moe_forward` against its ``dense`` exchange replayed from a CUDA graph.

At a few tokens per rank the eager exchanges are bound by host work (index building, the host read
of the split sizes, a dozen small launches), not by bytes. The ``dense`` exchange has fixed shapes,
so one call can be captured in a CUDA graph with its NCCL all-to-alls and replayed without any
host work; it moves ``world * T`` rows each way instead of about ``T * min(K, world)``.

Every rank takes ``T`` tokens of the shipped reference-MoE trace (evaluation steps, real routing),
per layer, under one placement planned on other steps. Variants, all in one process group:
``rows``, ``dedup``, ``dense`` (eager calls) and ``dense-graph`` (the dense call captured once per
layer and token count, then replayed). Timing: CUDA events around ``--iters`` back-to-back calls
(or replays), after a barrier; the median over ``--reps`` of the time per call; the slowest rank per
layer; the mean over the layers. Every variant's output is checked against the single-process
layer.

Usage: python bench/ep_decode.py [--world 4] [--tokens 1,8,32,128,512] [--expert-shape 2048,768]
       [--layers 4] [--policy balanced] [--iters 20] [--reps 10] [--json out.json]
       [--backend gloo]   (CPU check of the harness; no graph variant)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import ep_layer

VARIANTS = ("rows", "dedup", "dense", "dense-graph")


def _time(fn, args, cuda: bool, dev) -> float:
    """Median over reps of the time per call (us) of ``iters`` back-to-back calls after a barrier."""
    import torch.distributed as dist

    per_call = []
    for i in range(args.warmup + args.reps):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize(dev)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(args.iters):
                fn()
            b.record()
            b.synchronize()
            us = a.elapsed_time(b) * 1e3 / args.iters
        else:
            t0 = time.perf_counter()
            for _ in range(args.iters):
                fn()
            us = (time.perf_counter() - t0) * 1e6 / args.iters
        if i >= args.warmup:
            per_call.append(us)
    return float(np.median(per_call))


def _rank(rank: int, world: int, args) -> dict:
    from moebal.distributed import ep_moe_forward
    from moebal.moe_ops import moe_forward

    s, cuda, dev, w13, w2 = ep_layer.rank_setup(rank, world, args)
    H = args.expert_shape[0]
    pl = s["placements"][args.policy]
    spr = pl.num_slots // world
    out = {}
    for T in args.tokens:
        x = torch.randn(T, H, generator=torch.Generator().manual_seed(rank)).bfloat16().to(dev)
        for l in range(args.layers):
            ids, wts, slots, w13_l, w2_l = ep_layer.rank_layer(s, pl, l, rank, world, rank * T, T, w13, w2, args.assign)
            ref = moe_forward(x, w13, w2, topk_ids=ids, topk_weights=wts).float()
            scale = max(1e-6, float(ref.abs().max()))
            row = {}
            for v in args.variants:
                if v == "dense-graph":
                    ep_moe_forward(x, wts, slots, w13_l, w2_l, slots_per_rank=spr, exchange="dense")  # agrees, warms
                    torch.cuda.synchronize(dev)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        y_static = ep_moe_forward(x, wts, slots, w13_l, w2_l, slots_per_rank=spr, exchange="dense")
                    graph.replay()
                    y = y_static
                    fn = graph.replay
                else:
                    y = ep_moe_forward(x, wts, slots, w13_l, w2_l, slots_per_rank=spr, exchange=v)

                    def fn(v=v):
                        ep_moe_forward(x, wts, slots, w13_l, w2_l, slots_per_rank=spr, exchange=v)
                err = float((y.float() - ref).abs().max()) / scale
                row[v] = {"us": _time(fn, args, cuda, dev), "rel_err": err}
                if v == "dense-graph":
                    del graph, y_static
            out[f"{T}/{l}"] = row
    return out


def summarize(res: list, args) -> dict:
    table = {}
    for T in args.tokens:
        table[T] = {}
        for v in args.variants:
            per_layer = [max(r[f"{T}/{l}"][v]["us"] for r in res) for l in range(args.layers)]
            table[T][v] = {"us_per_layer": float(np.mean(per_layer)), "per_layer": per_layer,
                           "max_rel_err": float(max(r[f"{T}/{l}"][v]["rel_err"] for r in res for l in range(args.layers)))}
    return table


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    ap.add_argument("--world", type=int, default=None, help="ranks (default: every visible GPU; gloo: 2)")
    ap.add_argument("--trace", default=ep_layer.DEFAULT_TRACE)
    ap.add_argument("--tokens", default="1,8,32,128,512", help="tokens per rank, comma list")
    ap.add_argument("--expert-shape", default="2048,768", help="hidden,ffn of one expert")
    ap.add_argument("--layers", type=int, default=4, help="the trace's first LAYERS layers")
    ap.add_argument("--policy", default="balanced")
    ap.add_argument("--extra-per-gpu", type=int, default=1)
    ap.add_argument("--assign", default="weighted_locality")
    ap.add_argument("--variants", default=None, help=f"comma list of {', '.join(VARIANTS)} (default: all; gloo: "
                                                     "no dense-graph)")
    ap.add_argument("--plan-steps", default="0:2")
    ap.add_argument("--eval-steps", default="2:4")
    ap.add_argument("--iters", type=int, default=20, help="back-to-back calls per timing")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    try:
        args.tokens = sorted({int(v) for v in args.tokens.split(",")})
        if not args.tokens or args.tokens[0] < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--tokens takes positive integers, got {args.tokens!r}")
    ep_layer.check_common(ap, args)
    default = [v for v in VARIANTS if args.backend == "nccl" or v != "dense-graph"]
    args.variants = default if args.variants is None else [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants or len(set(args.variants)) != len(args.variants):
        ap.error(f"--variants takes {', '.join(VARIANTS)}, each at most once, got {args.variants}")
    if args.backend == "gloo" and "dense-graph" in args.variants:
        ap.error("--variants dense-graph needs --backend nccl (CUDA graphs)")
    if min(args.iters, args.reps, args.layers) < 1 or args.warmup < 0:
        ap.error("--iters, --reps and --layers must be >= 1, --warmup >= 0")
    from moebal import _core

    # the fields ep_layer.setup reads: real routing, one placement, tokens not repeated
    args.repeat, args.policies = 1, [args.policy]
    try:
        args.plan_steps = ep_layer._steps(args.plan_steps, "--plan-steps")
        args.eval_steps = ep_layer._steps(args.eval_steps, "--eval-steps")
        s = ep_layer.setup(args, args.world)
    except (ValueError, _core.MoebalValueError) as e:
        ap.error(str(e))
    if args.tokens[-1] > s["per_rank"]:
        ap.error(f"--tokens {args.tokens[-1]} per rank: the evaluation steps hold {s['per_rank']} per rank")
    if args.layers > s["L"]:
        ap.error(f"--layers {args.layers}: the trace has {s['L']}")
    return args


def main(argv=None) -> int:
    from moebal.distributed import run_ranks

    args = parse(argv)
    res = run_ranks(_rank, args.world, args, backend=args.backend, timeout=args.timeout)
    table = summarize(res, args)
    dev = torch.cuda.get_device_name(0) if args.backend == "nccl" else "cpu"
    H, F = args.expert_shape
    print(f"expert-parallel MoE layer at decode sizes, {args.world} ranks ({args.backend}, {dev}), experts {H}x{F} "
          f"bf16, policy {args.policy}, first {args.layers} layers of {os.path.basename(args.trace)}; us per layer "
          f"(slowest rank, median of {args.reps} x {args.iters} back-to-back calls, mean over layers)")
    hdr = ["tokens per rank"] + list(args.variants)
    eager = [v for v in args.variants if v != "dense-graph"]
    if "dense-graph" in args.variants and eager:
        hdr.append("dense-graph vs best eager")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for T, row in table.items():
        cells = [str(T)] + [f"{row[v]['us_per_layer']:.1f}" for v in args.variants]
        if len(hdr) > len(args.variants) + 1:
            best = min(row[v]["us_per_layer"] for v in eager)
            cells.append(f"{best / row['dense-graph']['us_per_layer']:.2f}x")
        print("| " + " | ".join(cells) + " |")
    ok = all(c["max_rel_err"] < 2e-2 for row in table.values() for c in row.values())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "world": args.world, "device": dev, "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "expert_shape": [H, F],
                       "policy": args.policy, "layers": args.layers, "iters": args.iters, "reps": args.reps,
                       "table": {str(T): row for T, row in table.items()}, "results_correct": ok}, f, indent=1)
    if not ok:
        print("ERROR: an expert-parallel output differs from the single-process layer", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
