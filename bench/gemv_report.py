"""Markdown table of the gemv decode kernel from a bench/kernels_gemm.py --variants forced JSON.

Per case (model, tokens, routing, projection or whole FFN): floor, gemv time and fraction of the
floor, the auto choice of the same run (the kAuto rule the library had when the JSON was written),
the fastest other moebal kernel, torch grouped_mm, and the speed-ups of gemv over auto and grouped_mm.
Usage: python bench/gemv_report.py run.json [--auto-label previous]
"""
from __future__ import annotations

import argparse
import json
import sys

GEMV = {"w13": "moebal_gemv", "w2": "moebal_gemv", "ffn": "moebal_ffn_gemv"}
AUTO = {"w13": "moebal_auto", "w2": "moebal_auto", "ffn": "moebal_expert_ffn"}
TORCH = {"w13": "torch_grouped_mm", "w2": "torch_grouped_mm", "ffn": "torch_ffn"}
OTHERS = {"w13": ["moebal_small_m", "moebal_medium_m", "moebal_large_m", "moebal_skinny"],
          "w2": ["moebal_small_m", "moebal_medium_m", "moebal_large_m", "moebal_skinny"],
          "ffn": ["moebal_ffn_skinny_fused", "moebal_ffn_previous"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--auto-label", default="auto")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        run = json.load(f)
    cases = {}
    for r in run["results"]:
        cases.setdefault((r["model"], r["tokens"], r["routing"], r["op"]), {})[r["impl"]] = r
    print(f"Device: {run['device']}, torch {run['torch']}; HBM copy {run['hbm_bps'] / 1e12:.2f} TB/s.\n")
    lab = args.auto_label
    print(f"| model | T | routing | op | rows | active | floor us | gemv us | gemv frac | {lab} us | {lab} frac | "
          f"best other kernel us | grouped_mm us | gemv vs {lab} | gemv vs grouped_mm |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for (model, tokens, routing, op), impls in sorted(cases.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                                                      ["w13", "w2", "ffn"].index(kv[0][3]))):
        g, a, t = impls.get(GEMV[op]), impls.get(AUTO[op]), impls.get(TORCH[op])
        if g is None or a is None:
            continue
        others = [impls[o] for o in OTHERS[op] if o in impls]
        best = min(others, key=lambda r: r["time_us"]) if others else None
        best_s = f"{best['time_us']:.1f} ({best['impl'].replace('moebal_', '')})" if best else "-"
        t_us = f"{t['time_us']:.1f}" if t else "-"
        vs_t = f"{t['time_us'] / g['time_us']:.2f}" if t else "-"
        print(f"| {model} | {tokens} | {routing} | {op} | {g['rows']} | {g['active']} | {g['floor_us']:.1f} | "
              f"{g['time_us']:.1f} | {g['frac_floor']:.2f} | {a['time_us']:.1f} | {a['frac_floor']:.2f} | {best_s} | "
              f"{t_us} | {a['time_us'] / g['time_us']:.2f} | {vs_t} |")


if __name__ == "__main__":
    sys.exit(main())
