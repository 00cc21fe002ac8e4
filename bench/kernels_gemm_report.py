"""Markdown tables from the JSON of bench/kernels_gemm.py.

Usage: python bench/kernels_gemm_report.py gemm.json > table.md
       python bench/kernels_gemm_report.py --skinny gemm.json > table.md   (skinny vs CUTLASS / grouped_mm)
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def load(path):
    """The benchmark JSON and its rows by (model, tokens, routing, op) -> {impl: row}."""
    with open(path) as f:
        data = json.load(f)
    by = defaultdict(dict)
    for r in data["results"]:
        by[(r["model"], r["tokens"], r["routing"], r["op"])][r["impl"]] = r
    return data, by


def main(path):
    data, by = load(path)
    sus = data.get("mm_flops_sustained")
    sus_s = (f", sustained (1 s back to back) {sus / 1e12:.0f} TFLOP/s at {data.get('sustained_sm_clock_mhz')} MHz, "
             f"{data.get('sustained_power_w')} W" if sus else "")
    print(f"Device: {data['device']}, torch {data['torch']}; measured ceilings in the same process: HBM copy "
          f"{data['hbm_bps'] / 1e12:.2f} TB/s, bf16 8192^3 matmul {data['mm_flops'] / 1e12:.0f} TFLOP/s (burst){sus_s}.\n")
    print("Per projection (w13: n = 2*ffn, k = hidden; w2: n = hidden, k = ffn) and the whole expert FFN. "
          "`frac` = floor / time, floor = max(distinct weight + activation bytes / HBM, FLOPs / matmul rate), "
          "with the burst matmul rate; `sus` = the same with the sustained rate. "
          "`vs gmm` = grouped_mm time / moebal time (> 1: moebal faster); `vs loop` the same against the "
          "per-expert torch.matmul loop (cuBLAS); `copy us` = a device copy moving the floor's bytes "
          "(bandwidth-bound rows, `--variants copy`).\n")
    print("| model | T | routing | op | rows | active | floor us | moebal us | TB/s | TFLOP/s | frac | sus | "
          "grouped_mm us | frac | vs gmm | matmul loop us | vs loop | copy us | kernel times small/medium/large us |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
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
                          for k in ("moebal_small_m", "moebal_medium_m", "moebal_large_m")) if op != "ffn" else ""
        loop_s = f"{loop['time_us']:.0f} | {loop['time_us'] / mine['time_us']:.2f}" if loop else "- | -"
        sus_f = f"{mine['frac_sustained']:.2f}" if "frac_sustained" in mine else "-"
        copy_s = f"{d['copy_same_bytes']['time_us']:.1f}" if "copy_same_bytes" in d else "-"
        print(f"| {model} | {tokens} | {routing} | {op} | {mine['rows']} | {mine['active']} | {mine['floor_us']:.1f} | "
              f"{mine['time_us']:.1f} | {mine['tbps']:.2f} | {mine['tflops']:.0f} | {mine['frac_floor']:.2f} | {sus_f} | "
              f"{base['time_us']:.1f} | {base['frac_floor']:.2f} | {base['time_us'] / mine['time_us']:.2f} | "
              f"{loop_s} | {copy_s} | {forced} |")
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
    regimes(multi)
    activation(by)
    split(by)


def regime_of(row):
    """decode (<= 16 rows per active expert), middle (16-512) or prefill (> 512)."""
    per = row["rows"] / max(1, row["active"])
    return "decode" if per <= 16 else "middle" if per <= 512 else "prefill"


def regimes(multi):
    """Per regime, over GEMM rows with >= 2 active experts: fractions of the floor and speed-ups."""
    def span(vals):
        vals = sorted(vals)
        return f"{vals[0]:.2f} / {vals[len(vals) // 2]:.2f} / {vals[-1]:.2f}" if vals else "-"
    print("\nBy regime (GEMM rows with >= 2 active experts; min / median / max):\n")
    print("`copy / moebal` = time of a device copy moving the floor's bytes over moebal's time, on bandwidth-bound "
          "rows (the copy pays the same launch and ramp-up as the GEMM; a GEMM that streams its weights as fast as a "
          "copy scores 1).\n")
    print("| regime | cases | moebal frac | moebal sus | grouped_mm frac | vs grouped_mm | vs matmul loop | "
          "copy / moebal | >= 0.85 frac | >= 0.85 sus |")
    print("|---|---:|---|---|---|---|---|---|---:|---:|")
    for reg in ("decode", "middle", "prefill"):
        rows = [d for _, d in multi if regime_of(d["moebal_auto"]) == reg]
        if not rows:
            continue
        mine = [d["moebal_auto"] for d in rows]
        sus = [r["frac_sustained"] for r in mine if "frac_sustained" in r]
        loops = [d["torch_matmul_loop"]["time_us"] / d["moebal_auto"]["time_us"] for d in rows if "torch_matmul_loop" in d]
        copies = [d["copy_same_bytes"]["time_us"] / d["moebal_auto"]["time_us"] for d in rows if "copy_same_bytes" in d]
        print(f"| {reg} | {len(rows)} | {span([r['frac_floor'] for r in mine])} | {span(sus)} | "
              f"{span([d['torch_grouped_mm']['frac_floor'] for d in rows])} | "
              f"{span([d['torch_grouped_mm']['time_us'] / d['moebal_auto']['time_us'] for d in rows])} | {span(loops)} | "
              f"{span(copies)} | "
              f"{sum(r['frac_floor'] >= 0.85 for r in mine)} | {sum(v >= 0.85 for v in sus) if sus else '-'} |")


def split(by):
    """The split launch against large_m alone (rows with the split variant)."""
    order = ["w13", "w2", "ffn"]
    keys = [k for k in sorted(by, key=lambda k: (k[0], k[1], k[2], order.index(k[3])))
            if ("moebal_split" in by[k] or "moebal_ffn_split" in by[k])]
    if not keys:
        return
    print("\nSplit launch (same process): `large_m` = every group on the large_m kernel; `split` = groups of more than "
          "64 rows on large_m, then the others on medium_m; `auto` = the default choice. FFN rows: both GEMMs on "
          "that kernel. `frac` = floor / time.\n")
    print("| model | T | routing | op | rows/active | floor us | large_m us | split us | split / large_m | frac | "
          "auto us | grouped_mm us |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in keys:
        model, tokens, routing, op = key
        d = by[key]
        pre = "moebal_ffn_" if op == "ffn" else "moebal_"
        lm, sp = d.get(pre + "large_m"), d.get(pre + "split")
        auto = d.get("moebal_expert_ffn" if op == "ffn" else "moebal_auto")
        gmm = d.get("torch_ffn" if op == "ffn" else "torch_grouped_mm")
        if lm is None or sp is None or auto is None or gmm is None:
            print(f"| {model} | {tokens} | {routing} | {op} | missing variant |")
            continue
        print(f"| {model} | {tokens} | {routing} | {op} | {sp['rows'] / max(1, sp['active']):.0f} | {sp['floor_us']:.0f} | "
              f"{lm['time_us']:.0f} | {sp['time_us']:.0f} | {lm['time_us'] / sp['time_us']:.2f} | "
              f"{sp['frac_floor']:.2f} | {auto['time_us']:.0f} | {gmm['time_us']:.0f} |")


def activation(by):
    """The FFN's two non-decode forms against moebal's two GEMMs alone (rows with the activation variant)."""
    rows = []
    for (model, tokens, routing, op), d in sorted(by.items()):
        w13, w2 = by.get((model, tokens, routing, "w13"), {}), by.get((model, tokens, routing, "w2"), {})
        auto, epi, sep = d.get("moebal_expert_ffn"), d.get("moebal_ffn_epilogue"), d.get("moebal_ffn_separate")
        if op != "ffn" or None in (auto, epi, sep) or "moebal_auto" not in w13 or "moebal_auto" not in w2:
            continue
        gemms = w13["moebal_auto"]["time_us"] + w2["moebal_auto"]["time_us"]
        rows.append((model, tokens, routing, gemms, auto["time_us"], epi["time_us"], sep["time_us"]))
    if not rows:
        return
    print("\nExpert FFN activation (same process): `epilogue` = gate GEMM, up GEMM with SiLU(gate) * up in its "
          "epilogue, down GEMM; `separate` = one w13 GEMM, a SiLU(gate) * up kernel, down GEMM (both forced with "
          "MOEBAL_FFN_SWIGLU_EPILOGUE); `auto` = the default choice; `GEMMs` = the w13 + w2 rows above (auto "
          "kernel, no activation). Percentages: time over `GEMMs`.\n")
    print("| model | T | routing | GEMMs us | auto us | epilogue us | | separate us | | separate / epilogue |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, tokens, routing, gemms, auto, epi, sep in rows:
        print(f"| {model} | {tokens} | {routing} | {gemms:.1f} | {auto:.1f} | {epi:.1f} | {epi / gemms - 1:+.1%} | "
              f"{sep:.1f} | {sep / gemms - 1:+.1%} | {sep / epi:.2f} |")

def skinny(path):
    """Skinny decode kernel vs the best forced CUTLASS kernel and grouped_mm; FFN fused vs previous vs torch."""
    data, by = load(path)
    print(f"Device: {data['device']}, torch {data['torch']}; HBM copy {data['hbm_bps'] / 1e12:.2f} TB/s, "
          f"bf16 8192^3 matmul {data['mm_flops'] / 1e12:.0f} TFLOP/s.\n")
    print("| model | T | routing | op | rows/active | floor us | skinny us | frac | best CUTLASS us | frac | "
          "grouped_mm us | frac | skinny vs gmm | auto us |")
    print("|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    cutlass = {"moebal_small_m": "small_m", "moebal_medium_m": "medium_m", "moebal_large_m": "large_m"}
    order = ["w13", "w2", "ffn"]
    for key in sorted(by, key=lambda k: (k[0], k[1], k[2], order.index(k[3]))):
        model, tokens, routing, op = key
        d = by[key]
        if op == "ffn":
            continue
        sk, gmm, auto = d.get("moebal_skinny"), d.get("torch_grouped_mm"), d.get("moebal_auto")
        best = min((d[k] for k in cutlass if k in d), key=lambda r: r["time_us"], default=None)
        if sk is None or gmm is None or best is None:
            print(f"| {model} | {tokens} | {routing} | {op} | missing variant |")
            continue
        print(f"| {model} | {tokens} | {routing} | {op} | {sk['rows'] / max(1, sk['active']):.1f} | {sk['floor_us']:.1f} | "
              f"{sk['time_us']:.1f} | {sk['frac_floor']:.2f} | {cutlass[best['impl']]} {best['time_us']:.1f} | "
              f"{best['frac_floor']:.2f} | {gmm['time_us']:.1f} | {gmm['frac_floor']:.2f} | "
              f"{gmm['time_us'] / sk['time_us']:.2f} | {auto['time_us'] if auto else float('nan'):.1f} |")
    print("\nExpert FFN (w13 -> SiLU(gate) * up -> w2): fused skinny (2 launches) vs the previous path (3 launches, "
          "CUTLASS kernel of the pre-skinny heuristic) vs auto vs torch (grouped_mm, silu * mul, grouped_mm).\n")
    print("| model | T | routing | rows/active | floor us | fused skinny us | frac | previous us | frac | auto us | "
          "torch us | frac | fused vs previous | fused vs torch |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(by, key=lambda k: (k[0], k[1], k[2])):
        model, tokens, routing, op = key
        if op != "ffn":
            continue
        d = by[key]
        fu, pr, au, to = (d.get(k) for k in ("moebal_ffn_skinny_fused", "moebal_ffn_previous", "moebal_expert_ffn",
                                              "torch_ffn"))
        if fu is None or pr is None or au is None or to is None:
            print(f"| {model} | {tokens} | {routing} | missing variant |")
            continue
        print(f"| {model} | {tokens} | {routing} | {fu['rows'] / max(1, fu['active']):.1f} | {fu['floor_us']:.1f} | "
              f"{fu['time_us']:.1f} | {fu['frac_floor']:.2f} | {pr['time_us']:.1f} | {pr['frac_floor']:.2f} | "
              f"{au['time_us']:.1f} | {to['time_us']:.1f} | {to['frac_floor']:.2f} | "
              f"{pr['time_us'] / fu['time_us']:.2f} | {to['time_us'] / fu['time_us']:.2f} |")


if __name__ == "__main__":
    if sys.argv[1] == "--skinny":
        skinny(sys.argv[2])
    else:
        main(sys.argv[1])
