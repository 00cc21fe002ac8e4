"""Tuning sweep of the skinny decode GEMM's weight stream: CTAs per SM (occupancy cap) x L2 256-byte
prefetch hint, on decode cases of the four bench models, against the CUTLASS small_m kernel.

Same timer as bench/kernels_gemm.py (L2 flush before each call, CUDA events, median). The knobs are
set through MOEBAL_SKINNY_CTAS_PER_SM / MOEBAL_SKINNY_L2_PREFETCH, which the library reads at each
launch. Prints a table and the best setting (geometric mean of time / best time over cases); with
--json writes everything, with --best-env writes "export ..." lines for the best setting.
Usage: python bench/skinny_sweep.py [--json out.json] [--best-env best.sh]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernels_gemm as kg  # noqa: E402
from moebal import gemm_ops  # noqa: E402

CASES = [  # (model, tokens, projection)
    ("deepseek-v3", 1, "w13"), ("deepseek-v3", 1, "w2"), ("mixtral-8x7b", 1, "w13"), ("mixtral-8x7b", 1, "w2"),
    ("gpt-oss-120b", 1, "w13"), ("gpt-oss-120b", 1, "w2"), ("qwen3-30b-a3b", 1, "w13"), ("qwen3-30b-a3b", 1, "w2"),
    ("mixtral-8x7b", 4, "w2"), ("deepseek-v3", 16, "w2"), ("qwen3-30b-a3b", 16, "w13"), ("gpt-oss-120b", 16, "w2"),
]
CTAS = [0, 1, 2, 3, 4, 6, 8]
PREFETCH = [0, 1]


def make_case(model, tokens, proj, gen):
    hidden, ffn, experts, k = kg.MODELS[model]
    counts = kg.route(tokens, experts, k, False, gen)
    offs = torch.zeros(experts + 1, dtype=torch.int32)
    offs[1:] = torch.cumsum(counts, 0)
    n, kk = (2 * ffn, hidden) if proj == "w13" else (hidden, ffn)
    x = torch.randn(int(counts.sum()), kk, device="cuda").to(torch.bfloat16)
    w = torch.randn(experts, n, kk, device="cuda", dtype=torch.bfloat16) / math.sqrt(kk)
    return x, w, offs.cuda(), int((counts > 0).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--best-env", default=None)
    args = ap.parse_args(argv)
    kg._flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    bw, _ = kg.measure_ceilings()
    gen = torch.Generator().manual_seed(1)
    configs = [(c, p) for p in PREFETCH for c in CTAS]
    times = {}  # case index -> {config: us}
    ref = {}
    for i, (model, tokens, proj) in enumerate(CASES):
        x, w, offs, active = make_case(model, tokens, proj, gen)
        want = gemm_ops.grouped_gemm(x, w, offs, kernel="hopper_small_m").float()
        ref[i] = dict(small_m_us=kg.time_fn(lambda: gemm_ops.grouped_gemm(x, w, offs, kernel="hopper_small_m")) * 1e6,
                      floor_us=(active * w.shape[1] * w.shape[2] * 2 + x.shape[0] * (w.shape[1] + w.shape[2]) * 2)
                      / bw * 1e6)
        times[i] = {}
        for c, p in configs:
            os.environ["MOEBAL_SKINNY_CTAS_PER_SM"] = str(c)
            os.environ["MOEBAL_SKINNY_L2_PREFETCH"] = str(p)
            got = gemm_ops.grouped_gemm(x, w, offs, kernel="skinny").float()
            err = ((got - want).norm() / want.norm()).item()
            if not err < 1e-2:
                raise RuntimeError(f"{model} T={tokens} {proj} ctas={c} pf={p}: rel err {err}")
            times[i][(c, p)] = kg.time_fn(lambda: gemm_ops.grouped_gemm(x, w, offs, kernel="skinny")) * 1e6
        del x, w
    scores = {}
    for cfg in configs:
        logs = [math.log(times[i][cfg] / min(times[i].values())) for i in times]
        scores[cfg] = math.exp(sum(logs) / len(logs))
    best = min(scores, key=scores.get)
    print(f"# device {torch.cuda.get_device_name()}: HBM copy {bw / 1e12:.2f} TB/s")
    print("| case | floor us | small_m us | " + " | ".join(f"c{c} p{p}" for c, p in configs) + " |")
    print("|---|---:|---:|" + "---:|" * len(configs))
    for i, (model, tokens, proj) in enumerate(CASES):
        print(f"| {model} T={tokens} {proj} | {ref[i]['floor_us']:.1f} | {ref[i]['small_m_us']:.1f} | "
              + " | ".join(f"{times[i][cfg]:.1f}" for cfg in configs) + " |")
    print("| geomean time / best | | | " + " | ".join(f"{scores[cfg]:.3f}" for cfg in configs) + " |")
    print(f"BEST ctas_per_sm={best[0]} l2_prefetch={best[1]} (geomean {scores[best]:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), hbm_bps=bw, configs=configs,
                           cases=[dict(model=m, tokens=t, proj=p, **ref[i], skinny_us=[times[i][c] for c in configs])
                                  for i, (m, t, p) in enumerate(CASES)],
                           scores=[scores[c] for c in configs], best=best), f)
    if args.best_env:
        with open(args.best_env, "w") as f:
            f.write(f"export MOEBAL_SKINNY_CTAS_PER_SM={best[0]} MOEBAL_SKINNY_L2_PREFETCH={best[1]}\n")


if __name__ == "__main__":
    sys.exit(main())
