"""Markdown tables from the JSON of bench/kernels_gemm.py.

Usage: python bench/kernels_gemm_report.py gemm.json > table.md
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    by = defaultdict(dict)
    for r in data["results"]:
        by[(r["model"], r["tokens"], r["routing"], r["op"])][r["impl"]] = r
    print(f"Device: {data['device']}, torch {data['torch']}; measured ceilings in the same process: HBM copy "
          f"{data['hbm_bps'] / 1e12:.2f} TB/s, bf16 8192^3 matmul {data['mm_flops'] / 1e12:.0f} TFLOP/s.\n")
    print("Per projection (w13: n = 2*ffn, k = hidden; w2: n = hidden, k = ffn) and the whole expert FFN. "
          "`frac` = floor / time, floor = max(distinct weight + activation bytes / HBM, FLOPs / matmul rate). "
          "`vs gmm` = grouped_mm time / moebal time (> 1: moebal faster).\n")
    print("| model | T | routing | op | rows | active | floor us | moebal us | TB/s | TFLOP/s | frac | "
          "grouped_mm us | frac | vs gmm | matmul loop us | kernel times small/medium/large/large_c2 us |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    fails = []
    for key in sorted(by, key=lambda k: (k[0], k[1], k[2], ["w13", "w2", "ffn"].index(k[3]))):
        model, tokens, routing, op = key
        d = by[key]
        mine = d.get("moebal_auto") or d.get("moebal_expert_ffn")
        base = d.get("torch_grouped_mm") or d.get("torch_ffn")
        if mine is None or base is None:
            fails.append(key)
            continue
        loop = d.get("torch_matmul_loop")
        forced = "/".join(f"{d[k]['time_us']:.0f}" if k in d else "-"
                          for k in ("moebal_small_m", "moebal_medium_m", "moebal_large_m", "moebal_large_m_c2")) if op != "ffn" else ""
        loop_s = f"{loop['time_us']:.0f}" if loop else "-"
        print(f"| {model} | {tokens} | {routing} | {op} | {mine['rows']} | {mine['active']} | {mine['floor_us']:.1f} | "
              f"{mine['time_us']:.1f} | {mine['tbps']:.2f} | {mine['tflops']:.0f} | {mine['frac_floor']:.2f} | "
              f"{base['time_us']:.1f} | {base['frac_floor']:.2f} | {base['time_us'] / mine['time_us']:.2f} | "
              f"{loop_s} | {forced} |")
    if fails:
        print("\nMissing (a variant failed; see the bench log):", ", ".join(map(str, fails)))
    # Summary of the targets over GEMM rows with >= 2 active experts.
    rows = [(k, by[k]) for k in by if k[3] != "ffn" and "moebal_auto" in by[k] and "torch_grouped_mm" in by[k]]
    multi = [(k, d) for k, d in rows if d["moebal_auto"]["active"] >= 2]
    below_floor = [(k, d["moebal_auto"]["frac_floor"]) for k, d in multi if d["moebal_auto"]["frac_floor"] < 0.85]
    below_gmm = [(k, d["torch_grouped_mm"]["time_us"] / d["moebal_auto"]["time_us"]) for k, d in rows
                 if d["torch_grouped_mm"]["time_us"] / d["moebal_auto"]["time_us"] < 0.95]
    print(f"\nTarget >= 0.85 of the floor (GEMM rows with >= 2 active experts): {len(multi) - len(below_floor)}"
          f" of {len(multi)} hold.")
    print(f"Target >= 0.95x grouped_mm (all GEMM rows): {len(rows) - len(below_gmm)} of {len(rows)} hold.")
    if below_gmm:
        print("Below 0.95x grouped_mm: " + "; ".join(f"{k[0]} T={k[1]} {k[2]} {k[3]}: {v:.2f}" for k, v in below_gmm))


if __name__ == "__main__":
    main(sys.argv[1])
