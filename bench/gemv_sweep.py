"""Tuning sweep of the gemv decode GEMM: k-split (1, 2, 4, 8 warps per weight-row block), weight rows per
warp (4 instead of the default), L2 256-byte prefetch hint, one knob at a time on decode cases of the
four bench models, beside the kernel kAuto picks and torch grouped_mm.

Same timer as bench/kernels_gemm.py (L2 flush before each call, CUDA events, median). The knobs are
set through MOEBAL_GEMV_K_SPLIT / MOEBAL_GEMV_ROWS_PER_WARP / MOEBAL_GEMV_L2_PREFETCH, which the library reads at each
launch; "default" is the library's own choice (no override). Prints a markdown table; --json writes it.
Usage: python bench/gemv_sweep.py [--tokens 1,16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernels_gemm as kg  # noqa: E402
from moebal import gemm_ops  # noqa: E402

KNOBS = {"nr": "MOEBAL_GEMV_ROWS_PER_WARP", "ks": "MOEBAL_GEMV_K_SPLIT", "pf": "MOEBAL_GEMV_L2_PREFETCH"}
CONFIGS = [("default", {}), ("ks1", {"ks": 1}), ("ks2", {"ks": 2}), ("ks4", {"ks": 4}), ("ks8", {"ks": 8}),
           ("nr4", {"nr": 4}), ("pf1", {"pf": 1})]


def set_config(knobs):
    for key, name in KNOBS.items():
        if key in knobs:
            os.environ[name] = str(knobs[key])
        else:
            os.environ.pop(name, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    kg._flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    bw, _ = kg.measure_ceilings()
    gen = torch.Generator().manual_seed(1)
    gmm = kg.grouped_mm_fn()
    rows_out = []
    print(f"# device {torch.cuda.get_device_name()}: HBM copy {bw / 1e12:.2f} TB/s")
    print("| case | rows | active | floor us | auto us | grouped_mm us | " + " | ".join(c[0] for c in CONFIGS) + " |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(CONFIGS))
    for tokens in map(int, args.tokens.split(",")):
        for model, (hidden, ffn, experts, topk) in kg.MODELS.items():
            counts = kg.route(tokens, experts, topk, False, gen)
            offs_h = torch.zeros(experts + 1, dtype=torch.int32)
            offs_h[1:] = torch.cumsum(counts, 0)
            offs, ends = offs_h.cuda(), offs_h[1:].cuda()
            rows, active = int(counts.sum()), int((counts > 0).sum())
            for proj, (n, k) in (("w13", (2 * ffn, hidden)), ("w2", (hidden, ffn))):
                x = torch.randn(rows, k, device="cuda").to(torch.bfloat16)
                w = torch.randn(experts, n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
                floor = (active * n * k * 2 + rows * (n + k) * 2) / bw * 1e6
                want = gmm(x, w.transpose(1, 2), offs=ends).float()
                set_config({})
                auto_us = kg.time_fn(lambda: gemm_ops.grouped_gemm(x, w, offs)) * 1e6
                gmm_us = kg.time_fn(lambda: gmm(x, w.transpose(1, 2), offs=ends)) * 1e6
                times = []
                for label, knobs in CONFIGS:
                    set_config(knobs)
                    got = gemm_ops.grouped_gemm(x, w, offs, kernel="gemv").float()
                    err = ((got - want).norm() / want.norm()).item()
                    if not err < 1e-2:
                        raise RuntimeError(f"{model} T={tokens} {proj} {label}: rel err {err}")
                    times.append(kg.time_fn(lambda: gemm_ops.grouped_gemm(x, w, offs, kernel="gemv")) * 1e6)
                set_config({})
                print(f"| {model} T={tokens} {proj} | {rows} | {active} | {floor:.1f} | {auto_us:.1f} | {gmm_us:.1f} | "
                      + " | ".join(f"{t:.1f}" for t in times) + " |", flush=True)
                rows_out.append(dict(model=model, tokens=tokens, proj=proj, rows=rows, active=active, floor_us=floor,
                                     auto_us=auto_us, grouped_mm_us=gmm_us, gemv_us=times))
                del x, w
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), hbm_bps=bw, configs=[c[0] for c in CONFIGS],
                           cases=rows_out), f)


if __name__ == "__main__":
    sys.exit(main())
