"""Markdown table of the gemv decode kernel from a bench/kernels_gemm.py --variants forced JSON.

Per case (model, tokens, routing, projection or whole FFN): floor; gemv time and fraction of the floor;
the kernel the auto rule chose BEFORE gemv existed (skinny when total_rows <= 8 and n * k <= 4 Mi on
Hopper, else small_m / medium_m / large_m by rows per active expert; FFN: the fused skinny path or the
3-launch path on that CUTLASS kernel), read from its forced-kernel column of the same run; the current
auto (moebal_auto / moebal_expert_ffn of the run); torch grouped_mm; speed-ups of gemv.
Usage: python bench/gemv_report.py run.json
"""
from __future__ import annotations

import argparse
import json
import sys

GEMV = {"w13": "moebal_gemv", "w2": "moebal_gemv", "ffn": "moebal_ffn_gemv"}
AUTO = {"w13": "moebal_auto", "w2": "moebal_auto", "ffn": "moebal_expert_ffn"}
TORCH = {"w13": "torch_grouped_mm", "w2": "torch_grouped_mm", "ffn": "torch_ffn"}


def previous_auto(op, rows, experts, n, k):
    """Implementation name of the pre-gemv kAuto choice on Hopper (cuda/gemm/grouped_gemm.cu before gemv)."""
    if rows <= 8 and n * k <= (4 << 20):
        return "moebal_ffn_skinny_fused" if op == "ffn" else "moebal_skinny"
    if op == "ffn":
        return "moebal_ffn_previous"  # 3 launches on the CUTLASS kernel of the per-group rule below
    per_group = rows // max(1, min(experts, rows))
    return "moebal_small_m" if per_group <= 4 else "moebal_medium_m" if per_group <= 24 else "moebal_large_m"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        run = json.load(f)
    cases = {}
    for r in run["results"]:
        cases.setdefault((r["model"], r["tokens"], r["routing"], r["op"]), {})[r["impl"]] = r
    print(f"Device: {run['device']}, torch {run['torch']}; HBM copy {run['hbm_bps'] / 1e12:.2f} TB/s.\n")
    print("| model | T | routing | op | rows | active | floor us | gemv us | gemv frac | previous auto | prev us | "
          "prev frac | auto now us | grouped_mm us | gemv vs prev | gemv vs grouped_mm |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    order = ["w13", "w2", "ffn"]
    for (model, tokens, routing, op), impls in sorted(cases.items(),
                                                      key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], order.index(kv[0][3]))):
        g, a, t = impls.get(GEMV[op]), impls.get(AUTO[op]), impls.get(TORCH[op])
        if g is None:
            continue
        prev_name = previous_auto(op, g["rows"], g["experts"], g["n"], g["k"])
        p = impls.get(prev_name)
        p_s = (f"{prev_name.replace('moebal_', '')} | {p['time_us']:.1f} | {p['frac_floor']:.2f}" if p
               else f"{prev_name.replace('moebal_', '')} | - | -")
        a_s = f"{a['time_us']:.1f}" if a else "-"
        t_s = f"{t['time_us']:.1f}" if t else "-"
        vs_p = f"{p['time_us'] / g['time_us']:.2f}" if p else "-"
        vs_t = f"{t['time_us'] / g['time_us']:.2f}" if t else "-"
        print(f"| {model} | {tokens} | {routing} | {op} | {g['rows']} | {g['active']} | {g['floor_us']:.1f} | "
              f"{g['time_us']:.1f} | {g['frac_floor']:.2f} | {p_s} | {a_s} | {t_s} | {vs_p} | {vs_t} |")


if __name__ == "__main__":
    sys.exit(main())
