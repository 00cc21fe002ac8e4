"""Benchmark of the PROBE lookahead-predictor kernel (moebal::probe_predict) on one GPU.

For T tokens at hidden H, E experts, top-k and residual width D (D = 0 is the next-gate baseline):
the op (cuBLAS GEMMs via at::mm + moebal's SiLU kernel + fused add/top-k/histogram kernel) against
a plain-torch eager implementation of the same math, in one process; CUDA-event timing, warm-up,
median. Compared with the all-to-all dispatch time of the layer, estimated as T x H x 2 bytes
(bf16) over NVLink (450 GB/s per direction line rate; ~370 GB/s effective NCCL, kernel-anchors 1.1).

Usage: python bench/probe_predictor.py [--tokens 8192] [--hidden 4096] [--experts 128] [--k 8]
       [--dims 0,256,1024,2048] [--iters 50] [--json out.json] [--refcheck] [--dispatch-json a2a.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def eager(h, w_cat, bias, w2, E, k):
    x = h @ w_cat.t()
    logits = x[:, :E].float() + bias
    if w2.shape[1]:
        logits = logits + (torch.nn.functional.silu(x[:, E:]) @ w2.t()).float()
    s, i = torch.topk(torch.softmax(logits, -1), k, -1)
    return logits, i.int(), s, torch.bincount(i.reshape(-1), minlength=E).int()


def timed(fn, iters: int) -> float:
    """Median microseconds of fn() (moebal.benchmark's CUDA-event timer, L2 flushed before each rep)."""
    from moebal.benchmark import time_cuda

    return time_cuda(fn, reps=iters, warmup=5, flush_l2=True).median_us


def measured_dispatch(path: str, tokens: int, hidden: int) -> dict:
    """The row of a bench/alltoall.py result with these tokens and hidden size (bf16)."""
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read a bench/alltoall.py result ({e})") from None
    if not isinstance(res, dict) or "rows" not in res:
        raise SystemExit(f"{path}: not a bench/alltoall.py result (no 'rows')")
    if res.get("hidden") != hidden or res.get("dtype") != "bfloat16":
        raise SystemExit(f"{path}: measured at hidden {res.get('hidden')} {res.get('dtype')}, need {hidden} bfloat16")
    rows = [r for r in res.get("rows", []) if r.get("tokens") == tokens]
    if not rows:
        raise SystemExit(f"{path}: no row for {tokens} tokens")
    return {"us": rows[0]["us_single_slowest_rank"], "us_back_to_back": rows[0]["us_slowest_rank"],
            "backend": res["backend"], "world": res["world"], "device": res["device"], "file": path}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--dims", default="0,256,1024,2048")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--refcheck", action="store_true", help="compare the CUDA op with the CPU op on 256 tokens (float32)")
    ap.add_argument("--dispatch-json", help="bench/alltoall.py --json output measured on this host: adds the measured "
                                            "dispatch of the same tokens and hidden size next to the estimates")
    args = ap.parse_args(argv)
    measured = measured_dispatch(args.dispatch_json, args.tokens, args.hidden) if args.dispatch_json else None
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    from moebal.predictor_ops import probe_predict

    T, H, E, k = args.tokens, args.hidden, args.experts, args.k
    g = torch.Generator(device="cuda").manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    h = torch.randn(T, H, device=dev, generator=g).to(dt)
    bytes_dispatch = T * H * 2
    from moebal.benchmark import device_description

    out = {"device": device_description(), "torch": torch.__version__, "tokens": T, "hidden": H,
           "experts": E, "k": k, "dtype": "bf16", "dispatch_bytes": bytes_dispatch,
           "dispatch_us_450GBps": bytes_dispatch / 450e9 * 1e6, "dispatch_us_370GBps": bytes_dispatch / 370e9 * 1e6,
           "rows": []}
    print(f"{out['device']}: T={T} H={H} E={E} k={k} bf16; dispatch of T x H x 2 B = {bytes_dispatch / 2**20:.0f} MiB: "
          f"{out['dispatch_us_450GBps']:.0f} us at 450 GB/s, {out['dispatch_us_370GBps']:.0f} us at 370 GB/s")
    if measured:
        out["dispatch_measured"] = measured
        print(f"measured dispatch ({measured['backend']} all_to_all_single, {measured['world']} ranks, every row "
              f"leaving its GPU): one call {measured['us']:.0f} us, back to back {measured['us_back_to_back']:.0f} us")
    print(f"{'D':>5} {'op us':>8} {'eager us':>9} {'TFLOP/s':>8} {'op/dispatch(370)':>17} "
          + (f"{'op/measured':>12} " if measured else "") + f"{'ids==eager':>10}")
    for D in [int(x) for x in args.dims.split(",")]:
        w_cat = (torch.randn(E + D, H, device=dev, generator=g) * H ** -0.5).to(dt)
        w2 = (torch.randn(E, D, device=dev, generator=g) * max(D, 1) ** -0.5 * 0.1).to(dt)
        bias = torch.zeros(E, device=dev)
        t_op = timed(lambda: probe_predict(h, w_cat, bias, w2, E, k), args.iters)
        t_eager = timed(lambda: eager(h, w_cat, bias, w2, E, k), args.iters)
        flops = 2 * T * H * (E + D) + 2 * T * D * E
        r1, r2 = probe_predict(h, w_cat, bias, w2, E, k), eager(h, w_cat, bias, w2, E, k)
        same = float((r1[1].sort(1).values == r2[1].sort(1).values).all(1).float().mean())
        row = {"D": D, "op_us": t_op, "eager_us": t_eager, "tflops": flops / t_op / 1e6,
               "op_over_dispatch_370": t_op / out["dispatch_us_370GBps"], "frac_tokens_same_ids_as_eager": same,
               **({"op_over_measured_dispatch": t_op / measured["us"],
                   "op_over_measured_dispatch_back_to_back": t_op / measured["us_back_to_back"]} if measured else {}),
               "counts_match_ids": bool((r1[3] == torch.bincount(r1[1].reshape(-1).long(), minlength=E).int()).all())}
        out["rows"].append(row)
        print(f"{D:>5} {t_op:8.1f} {t_eager:9.1f} {row['tflops']:8.1f} {row['op_over_dispatch_370']:17.3f} "
              + (f"{row['op_over_measured_dispatch']:12.3f} " if measured else "") + f"{same:10.4f}")
    if args.refcheck:
        D = 256
        w_cat = (torch.randn(E + D, H, device=dev, generator=g) * H ** -0.5)
        w2 = torch.randn(E, D, device=dev, generator=g) * D ** -0.5
        hh = torch.randn(256, H, device=dev, generator=g)
        bias = torch.randn(E, device=dev)
        gpu = probe_predict(hh, w_cat, bias, w2, E, k)
        cpu = probe_predict(hh.cpu(), w_cat.cpu(), bias.cpu(), w2.cpu(), E, k)
        out["refcheck"] = {"max_abs_logit_diff": float((gpu[0].cpu() - cpu[0]).abs().max()),
                           "frac_tokens_same_ids": float((gpu[1].cpu() == cpu[1]).all(1).float().mean()),
                           "counts_equal": bool((gpu[3].cpu() == cpu[3]).all())}
        print("refcheck (float32, 256 tokens, GPU vs CPU op):", out["refcheck"])
    if args.json:
        json.dump(out, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
