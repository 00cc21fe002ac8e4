"""Grouped expert GEMM / expert FFN benchmark on one GPU: moebal vs torch._grouped_mm vs a
per-expert torch.matmul loop, on MoE shapes, token counts and balanced / Zipf routing.

Every timed call is preceded by a 256 MiB L2 flush (outside the timed region); CUDA events
around each call; median of the repetitions after warm-up. The variants of one case are timed in
interleaved rounds (time_fns), so drift and order effects fall on all of them alike. The HBM copy rate and an 8192^3 bf16
matmul are measured in the same process and set the floors:
  floor = max(distinct expert weight bytes + activation bytes) / HBM, FLOPs / matmul rate).
The matmul rate is measured twice: ten matmuls after L2 flushes (burst, boost clock; it sets `floor`
and `frac_floor`) and one second of back-to-back matmuls (sustained, at the lower clock a long
load runs at; it sets `frac_sustained`).
Forced-kernel variants (--variants forced) time every moebal kernel on every case, incl. the
skinny and gemv decode kernels; the expert FFN is timed as auto, as the fused skinny path (gate/up
GEMM with SiLU * up in its epilogue + down GEMM), on the gemv kernel (GEMM, SiLU * up, GEMM) and as
the previous unfused path (GEMM, SiLU * up, GEMM with the CUTLASS kernel the pre-skinny heuristic
chose).
Usage: python bench/kernels_gemm.py [--json out.json] [--models a,b] [--tokens 1,16] [--variants forced]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

from moebal import gemm_ops

MODELS = {  # name: (hidden, ffn, experts, top_k)
    "mixtral-8x7b": (4096, 14336, 8, 2),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "deepseek-v3": (7168, 2048, 256, 8),
    "gpt-oss-120b": (2880, 2880, 128, 4),
}
TOKENS = [1, 16, 128, 1024, 4096, 16384]

_flush_buf = None


def flush_l2():
    _flush_buf.zero_()


def time_fn(fn, min_reps=5, max_reps=30, budget_s=0.08):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    reps = int(max(min_reps, min(max_reps, budget_s / max(one, 1e-6))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3  # seconds


def time_fns(fns, min_reps=5, max_reps=30, budget_s=0.08):
    """Median seconds of each fn in {name: fn}, measured in interleaved rounds (every fn once per
    round, the starting fn rotating) so that clock and power drift, and whatever a fn leaves behind
    for the next, fall on every fn alike: timed one after the other, the same large FFN measured 20%
    apart depending on what ran before it. A fn that raises is dropped and reported in the errors.
    Returns ({name: seconds}, {name: exception})."""
    names = list(fns)
    errors, one = {}, {}
    for name in names:
        try:
            fns[name]()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fns[name]()
            torch.cuda.synchronize()
            one[name] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 (reported by the caller)
            errors[name] = e
    live = [n for n in names if n in one]
    if not live:
        return {}, errors
    reps = int(max(min_reps, min(max_reps, budget_s / max(max(one.values()), 1e-6))))
    events = {n: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
              for n in live}
    for r in range(reps):
        for i in range(len(live)):
            name = live[(i + r) % len(live)]
            start, end = events[name][r]
            flush_l2()
            start.record()
            fns[name]()
            end.record()
    torch.cuda.synchronize()
    return {n: statistics.median(s.elapsed_time(e) for s, e in events[n]) * 1e-3 for n in live}, errors


def measure_ceilings():
    a = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    b = torch.empty_like(a)
    t = time_fn(lambda: b.copy_(a), min_reps=10, max_reps=10)
    bw = 2 * a.numel() * 2 / t
    del a, b
    m = torch.randn(8192, 8192, device="cuda").to(torch.bfloat16)
    t = time_fn(lambda: m @ m, min_reps=10, max_reps=10)
    flops = 2 * 8192 ** 3 / t
    return bw, flops


def gpu_clock_and_power():
    """(SM clock MHz, board power W) of the current GPU from nvidia-smi, or (None, None)."""
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(torch.cuda.current_device()), "--query-gpu=clocks.sm,power.draw",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        mhz, watts = (float(v) for v in out.strip().split(","))
        return mhz, watts
    except (OSError, ValueError, subprocess.SubprocessError):
        return None, None


def measure_sustained_mm(seconds=1.0):
    """The bf16 8192^3 matmul rate over about `seconds` of back-to-back matmuls, and the SM clock and
    board power sampled while they run. measure_ceilings times ten matmuls, each after an L2 flush:
    a burst, at the boost clock. Under load lasting many milliseconds the SM clock drops (1425-1440
    MHz against a 1980 MHz maximum on the H100, with the board below its 700 W limit when sampled),
    and the rate was 10-15% below the burst one (bench/results/tile_configs.md), which is why both
    are reported."""
    m = torch.randn(8192, 8192, device="cuda").to(torch.bfloat16)
    one = time_fn(lambda: m @ m, min_reps=3, max_reps=3)
    reps = max(10, int(seconds / one))
    for _ in range(reps // 4):  # reach the sustained clock before timing
        m @ m
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        m @ m
    end.record()
    samples = [gpu_clock_and_power() for _ in range(3)]  # the matmuls are still queued
    torch.cuda.synchronize()
    rate = 2 * 8192 ** 3 * reps / (start.elapsed_time(end) * 1e-3)
    clocks = [c for c, _ in samples if c is not None]
    watts = [w for _, w in samples if w is not None]
    return rate, (min(clocks) if clocks else None), (max(watts) if watts else None)


def route(tokens, experts, k, zipf, gen):
    if zipf:
        p = 1.0 / torch.arange(1, experts + 1, dtype=torch.float64) ** 1.2
        p = p[torch.randperm(experts, generator=gen)]
    else:
        p = torch.ones(experts, dtype=torch.float64)
    ids = torch.multinomial(p.expand(tokens, experts), k, replacement=False, generator=gen)
    counts = torch.bincount(ids.flatten(), minlength=experts)
    return counts


def previous_kernel(rows, experts):
    """The kernel the heuristic chose before the skinny kernel existed (Hopper: by rows per active expert)."""
    if torch.cuda.get_device_capability() != (9, 0):
        return "portable"
    per_group = rows // max(1, min(experts, rows))
    return "hopper_small_m" if per_group <= 4 else "hopper_medium_m" if per_group <= 24 else "hopper_large_m"


def with_env(name, value, fn):
    """fn run with the environment variable set (the library reads it at each call)."""
    def run():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
    return run


def with_envs(env, fn):
    """fn run with every variable of env set."""
    for name, value in env.items():
        fn = with_env(name, value, fn)
    return fn


def split_settings():
    """(name, environment) of the split-launch variants: the default class boundary (64 rows) and
    those of BENCH_SPLIT_ROWS (comma-separated, default none)."""
    out = [("moebal_split", {})]
    for rows in filter(None, os.environ.get("BENCH_SPLIT_ROWS", "").split(",")):
        out.append((f"moebal_split_rows{rows}", {"MOEBAL_GEMM_SPLIT_ROWS": rows}))
    return out


def order_settings():
    """(name, environment) of the tile-order variants: raster along n, and swizzles 2 and 4 along m
    and along n."""
    out = [("n1", {"MOEBAL_GEMM_RASTER": "1"})]
    for sw in (2, 4):
        out.append((f"m{sw}", {"MOEBAL_GEMM_SWIZZLE": str(sw)}))
        out.append((f"n{sw}", {"MOEBAL_GEMM_RASTER": "1", "MOEBAL_GEMM_SWIZZLE": str(sw)}))
    return out


def grouped_mm_fn():
    f = getattr(torch.nn.functional, "grouped_mm", None)
    return f if f is not None else torch._grouped_mm


def bench_case(model, tokens, zipf, bw, peak, gen, variants, sustained=None):
    hidden, ffn, experts, k = MODELS[model]
    counts = route(tokens, experts, k, zipf, gen)
    rows = int(counts.sum())
    active = int((counts > 0).sum())
    offs_host = torch.zeros(experts + 1, dtype=torch.int32)
    offs_host[1:] = torch.cumsum(counts, 0)
    offs = offs_host.cuda()
    ends = offs[1:].contiguous()
    x = torch.randn(rows, hidden, device="cuda").to(torch.bfloat16)
    gmm = grouped_mm_fn()
    results = []
    projections = {"w13": (2 * ffn, hidden), "w2": (hidden, ffn)}
    weights = {}
    for proj, (n, kk) in projections.items():
        w = (torch.randn(experts, n, kk, device="cuda", dtype=torch.bfloat16) * (1.0 / math.sqrt(kk)))
        weights[proj] = w
        a = x if proj == "w13" else torch.randn(rows, kk, device="cuda").to(torch.bfloat16)
        flops = 2.0 * rows * n * kk
        bytes_ = active * n * kk * 2 + rows * (n + kk) * 2
        floor = max(bytes_ / bw, flops / peak)
        floor_sus = max(bytes_ / bw, flops / (sustained or peak))
        ref = gmm(a, w.transpose(1, 2), offs=ends)
        fns = {
            "torch_grouped_mm": lambda: gmm(a, w.transpose(1, 2), offs=ends),
            "moebal_auto": lambda: gemm_ops.grouped_gemm(a, w, offs),
        }
        if "forced" in variants:
            fns["moebal_small_m"] = lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_small_m")
            fns["moebal_medium_m"] = lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_medium_m")
            fns["moebal_large_m"] = lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_large_m")
            fns["moebal_skinny"] = lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="skinny")
            fns["moebal_gemv"] = lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="gemv")
        if "split" in variants:  # the split launch beside large_m alone (docs/gemm.md)
            fns.setdefault("moebal_large_m", lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_large_m"))
            for name, env in split_settings():
                fns[name] = with_envs(env, lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_split"))
        if "order" in variants:  # tile order of the Hopper kernels (MOEBAL_GEMM_RASTER / _SWIZZLE)
            fns.setdefault("moebal_large_m", lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_large_m"))
            for name, env in order_settings():
                fns["moebal_large_m_" + name] = with_envs(
                    env, lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_large_m"))
                fns["moebal_auto_" + name] = with_envs(env, lambda: gemm_ops.grouped_gemm(a, w, offs))
        if "copy" in variants and bytes_ / bw >= flops / peak and bytes_ <= 8 << 30:
            # Bandwidth-bound rows: a device copy moving the floor's bytes (half read, half written),
            # launch and ramp-up included like every timed call. It returns `ref` so the output check
            # passes; only its time is used.
            cp_src = torch.empty(max(16, int(bytes_) // 32 * 16), dtype=torch.uint8, device="cuda")
            cp_dst = torch.empty_like(cp_src)
            fns["copy_same_bytes"] = lambda: (cp_dst.copy_(cp_src), ref)[1]
        if "loop" in variants:
            segs = [(g, int(offs_host[g]), int(offs_host[g + 1])) for g in range(experts) if counts[g] > 0]
            y_loop = torch.empty(rows, n, device="cuda", dtype=torch.bfloat16)

            def loop():
                for g, s, e in segs:
                    torch.matmul(a[s:e], w[g].T, out=y_loop[s:e])
                return y_loop
            fns["torch_matmul_loop"] = loop
        checked = {}
        for name, fn in fns.items():
            try:
                err = ((fn().float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
                if not err < 1e-2:
                    raise RuntimeError(f"rel err {err} vs torch._grouped_mm")
                checked[name] = fn
            except Exception as e:  # keep the baselines of the run; report the failure
                print(f"ERROR {model} T={tokens} {proj} {name}: {e}", flush=True)
        times, errors = time_fns(checked)
        for name, e in errors.items():
            print(f"ERROR {model} T={tokens} {proj} {name}: {e}", flush=True)
        for name, t in times.items():
            results.append(dict(model=model, tokens=tokens, routing="zipf" if zipf else "balanced", op=proj,
                                impl=name, rows=rows, active=active, experts=experts, n=n, k=kk,
                                time_us=t * 1e6, tflops=flops / t / 1e12,
                                tbps=bytes_ / t / 1e12, floor_us=floor * 1e6, frac_floor=floor / t,
                                frac_sustained=floor_sus / t))
        del a
    # Whole expert FFN: moebal vs torch (grouped_mm, silu*mul, grouped_mm); with the "activation"
    # variant also both non-decode forms forced: SiLU(gate)*up in the up GEMM's epilogue after a gate
    # GEMM, or one w13 GEMM and a separate activation kernel.
    w13, w2 = weights["w13"], weights["w2"]
    flops = 2.0 * rows * 3 * ffn * hidden
    bytes_ = active * 3 * ffn * hidden * 2 + rows * 2 * hidden * 2
    floor = max(bytes_ / bw, flops / peak)
    floor_sus = max(bytes_ / bw, flops / (sustained or peak))

    def torch_ffn():
        h = gmm(x, w13.transpose(1, 2), offs=ends)
        act = torch.nn.functional.silu(h[:, :ffn]) * h[:, ffn:]
        return gmm(act, w2.transpose(1, 2), offs=ends)
    ref = torch_ffn()
    ffn_fns = {"torch_ffn": torch_ffn, "moebal_expert_ffn": lambda: gemm_ops.expert_ffn(x, w13, w2, offs)}
    if "activation" in variants:  # both non-decode FFN forms, forced (docs/gemm.md)
        ffn_fns["moebal_ffn_epilogue"] = with_env("MOEBAL_FFN_SWIGLU_EPILOGUE", "1",
                                                  lambda: gemm_ops.expert_ffn(x, w13, w2, offs))
        ffn_fns["moebal_ffn_separate"] = with_env("MOEBAL_FFN_SWIGLU_EPILOGUE", "0",
                                                  lambda: gemm_ops.expert_ffn(x, w13, w2, offs))
    if "split" in variants:
        ffn_fns["moebal_ffn_large_m"] = lambda: gemm_ops.expert_ffn(x, w13, w2, offs, kernel="hopper_large_m")
        for name, env in split_settings():
            ffn_fns["moebal_ffn_" + name[len("moebal_"):]] = with_envs(
                env, lambda: gemm_ops.expert_ffn(x, w13, w2, offs, kernel="hopper_split"))
    if "forced" in variants:
        prev = previous_kernel(rows, experts)
        ffn_fns["moebal_ffn_skinny_fused"] = lambda: gemm_ops.expert_ffn(x, w13, w2, offs, kernel="skinny")
        ffn_fns["moebal_ffn_previous"] = lambda: gemm_ops.expert_ffn(x, w13, w2, offs, kernel=prev)
        ffn_fns["moebal_ffn_gemv"] = lambda: gemm_ops.expert_ffn(x, w13, w2, offs, kernel="gemv")
    checked = {}
    for name, fn in ffn_fns.items():
        try:
            err = ((fn().float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
            if not err < 2e-2:
                raise RuntimeError(f"rel err {err} vs the torch composition")
            checked[name] = fn
        except Exception as e:
            print(f"ERROR {model} T={tokens} ffn {name}: {e}", flush=True)
    times, errors = time_fns(checked)
    for name, e in errors.items():
        print(f"ERROR {model} T={tokens} ffn {name}: {e}", flush=True)
    for name, t in times.items():
        results.append(dict(model=model, tokens=tokens, routing="zipf" if zipf else "balanced", op="ffn", impl=name,
                            rows=rows, active=active, experts=experts, n=2 * ffn, k=hidden, time_us=t * 1e6, tflops=flops / t / 1e12, tbps=bytes_ / t / 1e12,
                            floor_us=floor * 1e6, frac_floor=floor / t, frac_sustained=floor_sus / t))
    del weights, w13, w2, x
    torch.cuda.empty_cache()
    return results


VARIANTS = ("forced", "loop", "activation", "split", "order", "copy")


def comma_list(ap, text, allowed, what):
    """The comma-separated items of `text`, each one of `allowed` (an argparse error otherwise, before
    any GPU work: a misspelt variant must not silently drop a baseline from the run)."""
    items = [x for x in text.split(",") if x]
    bad = [x for x in items if x not in allowed]
    if bad:
        ap.error(f"unknown {what} {', '.join(bad)}; choose from {', '.join(map(str, allowed))}")
    return items


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--routing", default="balanced,zipf")
    ap.add_argument("--variants", default="forced,loop,activation",
                    help="extra variants: forced (per-kernel), loop, activation (both FFN forms), split (split launch), "
                         "order (tile orders), copy (a device copy moving the floor's bytes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.models = comma_list(ap, args.models, tuple(MODELS), "model")
    args.routing = comma_list(ap, args.routing, ("balanced", "zipf"), "routing")
    args.variants = set(comma_list(ap, args.variants, VARIANTS, "variant"))
    try:
        args.tokens = [int(t) for t in args.tokens.split(",") if t]
    except ValueError:
        ap.error(f"--tokens must be comma-separated integers, got {args.tokens!r}")
    if not args.tokens or min(args.tokens) < 1:
        ap.error(f"--tokens must list token counts >= 1, got {args.tokens}")
    return args


def main(argv=None):
    args = parse_args(argv)
    global _flush_buf
    _flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    t0 = time.time()
    bw, peak = measure_ceilings()
    sustained, clock_mhz, watts = measure_sustained_mm()
    print(f"# device {torch.cuda.get_device_name()} torch {torch.__version__}: HBM copy {bw / 1e12:.2f} TB/s, "
          f"bf16 8192^3 mm {peak / 1e12:.0f} TFLOP/s (burst), {sustained / 1e12:.0f} TFLOP/s sustained "
          f"(SM clock {clock_mhz} MHz, {watts} W)", flush=True)
    gen = torch.Generator().manual_seed(0)
    out = []
    for model in args.models:
        for tokens in args.tokens:
            for routing in args.routing:
                res = bench_case(model, tokens, routing == "zipf", bw, peak, gen, args.variants, sustained)
                out.extend(res)
                for r in res:
                    print(f"{r['model']:14s} T={r['tokens']:5d} {r['routing']:8s} {r['op']:3s} {r['impl']:18s} "
                          f"rows={r['rows']:6d} act={r['active']:3d} {r['time_us']:9.1f} us {r['tbps']:5.2f} TB/s "
                          f"{r['tflops']:6.1f} TF/s floor {r['frac_floor']:.2f} ({r['frac_sustained']:.2f} sustained)", flush=True)
    print(f"# total {time.time() - t0:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, hbm_bps=bw, mm_flops=peak,
                           mm_flops_sustained=sustained, sustained_sm_clock_mhz=clock_mhz, sustained_power_w=watts,
                           results=out), f, separators=(",", ":"))


if __name__ == "__main__":
    sys.exit(main())
