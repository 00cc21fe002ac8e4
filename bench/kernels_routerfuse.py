"""Router + dispatch layout at decode sizes: one fused launch (torch.ops.moebal.route_and_layout, its
one-block, cluster and grid paths and the automatic choice) against the two launches router_topk +
dispatch_layout, in one process on one device.

Each model uses its own router configuration (DeepSeek-V3: sigmoid, correction bias, 8 groups /
top-4 groups, scaling 2.5), with the identity placement and a replicated one (the first E/8
experts get a second copy). Both paths are timed as CUDA-graph replays of 10 captured calls (what a
graph-captured decode step pays, graph-node gaps included), CUDA events, median of 7 repetitions
(kernels_dataplane.time_ms). Every row also checks that the two paths give identical outputs
(ids, weights bit for bit, layout).

  python bench/kernels_routerfuse.py --json $OUT/routerfuse.json --md $OUT/routerfuse.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels_dataplane import time_ms  # noqa: E402

from moebal import moe_ops  # noqa: E402

MODELS = moe_ops.ROUTER_PRESETS  # name: experts, top_k, router arguments, correction bias
TOKENS = [1, 4, 16, 32, 128, 256]
PATHS = ["auto", "one_block", "cluster", "grid"]


def replicated_placement(e: int, gen: torch.Generator):
    """The first max(1, e // 8) experts get a second copy; slots shuffled."""
    copies = torch.ones(e, dtype=torch.int32)
    copies[: max(1, e // 8)] = 2
    s = int(copies.sum())
    perm = torch.randperm(s, generator=gen, device="cpu").int()
    log2phy = torch.full((e, 2), -1, dtype=torch.int32)
    at = 0
    for x in range(e):
        c = int(copies[x])
        log2phy[x, :c] = perm[at:at + c]
        at += c
    return s, log2phy.cuda(), copies.cuda()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    dev = torch.cuda.get_device_name()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (e, k, kw, use_bias) in MODELS.items():
        kw = dict(kw)
        if use_bias:
            kw["correction_bias"] = (torch.randn(e, generator=gen) * 0.1).cuda()
        for placement in ("identity", "replicated"):
            s, log2phy, logcnt = (e, None, None) if placement == "identity" else replicated_placement(e, gen)
            for t in [int(x) for x in args.tokens.split(",")]:
                logits = (torch.randn(t, e, generator=gen) * 2).cuda()

                def fused(path="auto"):
                    return moe_ops.route_and_layout(logits, k, s, log2phy=log2phy, logcnt=logcnt, path=path, **kw)

                def two():
                    ids, w = moe_ops.router_topk(logits, k, **kw)
                    return (ids, w) + tuple(moe_ops.dispatch_layout(ids, e, s, log2phy, logcnt))

                want = two()
                r = dict(model=name, tokens=t, placement=placement, experts=e, top_k=k, slots=s, identical=True)
                r["two_launch_us"] = 1e3 * time_ms(two, graph=True)
                for p_ in PATHS:
                    try:  # a path that fails is reported (and fails the run), the others still run
                        r["identical"] &= all(torch.equal(a, b) for a, b in zip(fused(p_), want))
                        r[f"{p_}_us"] = 1e3 * time_ms(lambda: fused(p_), graph=True)
                    except RuntimeError as err:
                        r["identical"] = False
                        r[f"{p_}_us"] = float("nan")
                        r[f"{p_}_error"] = str(err)[:300]
                r["speedup"] = r["two_launch_us"] / r["auto_us"]
                rows.append(r)
                print(json.dumps({k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in r.items()}), flush=True)
    meta = dict(device=dev, torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    lines = [f"Device: {dev}, torch {torch.__version__}, {meta['date']}.", "",
             "| model | tokens | placement | slots | router + layout (2 launches) us | one block us | cluster us "
             "| grid us | auto us | speedup (auto) | outputs identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tokens']} | {r['placement']} | {r['slots']} | {r['two_launch_us']:.1f} | "
                     f"{r['one_block_us']:.1f} | {r['cluster_us']:.1f} | {r['grid_us']:.1f} | {r['auto_us']:.1f} | "
                     f"{r['speedup']:.2f}x | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    md = "\n".join(lines) + "\n"
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(md)
    print(md)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
