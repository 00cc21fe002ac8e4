"""All-to-all dispatch time measured over torch.distributed, against the estimate the predictor
benchmark uses (tokens x hidden x bytes over one NVLink direction).

Each of ``world`` processes holds ``tokens`` rows of ``hidden`` values and sends every row off its
GPU, spread evenly over the other ranks (the worst case of an MoE dispatch: no token's expert is
local); one ``all_to_all_single`` moves them. With 2 ranks every row goes to the peer, which is the
issue's estimate measured directly: ``tokens x hidden x 2`` bytes over the link, both directions at
once. The received rows are checked against what each sender holds (values exact in any dtype), so a
wrong split fails the run instead of timing it.

Timing: NCCL on CUDA devices (one per rank) with CUDA events, or gloo on CPU with the wall clock
(the logic check CI runs). Two figures per size, each the median over ``reps`` after warm-up: one
call after a barrier (a layer's dispatch, the ranks' skew included) and ``inner`` calls back to
back (per call; the skew amortised, as nccl-tests times). The table reports the slowest rank (the
dispatch waits for it).

Usage: python bench/alltoall.py [--backend nccl|gloo] [--world 2] [--tokens 128,1024,8192]
       [--hidden 4096] [--dtype bfloat16|float32] [--reps 20] [--inner 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

ESTIMATE_GBPS = (450.0, 370.0)  # NVLink4 line rate per direction; NCCL effective (kernel-anchors 1.1)


def splits(tokens: int, world: int, rank: int) -> list:
    """Rows ``rank`` sends to each rank: none to itself, the others as even as integers allow (the
    first ``tokens % (world - 1)`` other ranks in ring order from rank + 1 take one more)."""
    out = [0] * world
    base, extra = divmod(tokens, world - 1)
    for i in range(world - 1):
        out[(rank + 1 + i) % world] = base + (1 if i < extra else 0)
    return out


def rows_of(rank: int, tokens: int, hidden: int, dtype, device) -> torch.Tensor:
    """Rank ``rank``'s rows: small integers (exact in bf16) that differ per sender, row and column."""
    r = torch.arange(tokens, device=device).view(-1, 1)
    c = torch.arange(hidden, device=device).view(1, -1)
    return ((rank * 37 + r * 11 + c * 3) % 61 - 30).to(dtype)


def expected(rank: int, world: int, tokens: int, hidden: int, dtype, device) -> torch.Tensor:
    """What ``rank`` must receive: from each sender j in rank order, j's rows addressed to rank."""
    parts = []
    for j in range(world):
        sp = splits(tokens, world, j)
        start = sum(sp[:rank])
        parts.append(rows_of(j, tokens, hidden, dtype, device)[start:start + sp[rank]])
    return torch.cat(parts)


def _timed(fn, inner: int, reps: int, cuda: bool, dist) -> float:
    """Median over ``reps`` of the time per call of ``inner`` back-to-back calls, each rep started
    after a barrier. With inner = 1 that is one dispatch as a layer issues it (the ranks' skew
    after the barrier included); back to back, the skew is amortised, as in nccl-tests."""
    times = []
    for _ in range(reps):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) * 1e6 / inner)
    times.sort()
    return times[len(times) // 2]


def _rank(rank: int, world: int, args) -> list:
    import torch.distributed as dist

    cuda = args.backend == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = getattr(torch, args.dtype)
    rows = []
    for T in args.tokens:
        x = rows_of(rank, T, args.hidden, dtype, device)
        send = splits(T, world, rank)
        recv = [splits(T, world, j)[rank] for j in range(world)]
        y = torch.empty(sum(recv), args.hidden, dtype=dtype, device=device)
        dist.all_to_all_single(y, x, recv, send)
        ok = bool(torch.equal(y, expected(rank, world, T, args.hidden, dtype, device)))
        for _ in range(3):
            dist.all_to_all_single(y, x, recv, send)
        single = _timed(lambda: dist.all_to_all_single(y, x, recv, send), 1, args.reps, cuda, dist)
        chain = _timed(lambda: dist.all_to_all_single(y, x, recv, send), args.inner, args.reps, cuda, dist)
        y.zero_()  # and once more after the timed calls, into a cleared buffer
        dist.all_to_all_single(y, x, recv, send)
        ok = ok and bool(torch.equal(y, expected(rank, world, T, args.hidden, dtype, device)))
        rows.append({"tokens": T, "us": chain, "us_single": single, "correct": ok})
    return rows


def run(args) -> dict:
    from moebal.distributed import run_ranks

    results = run_ranks(_rank, args.world, args, backend=args.backend, timeout=args.timeout)
    esize = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    out = []
    for i, T in enumerate(args.tokens):
        us = max(results[r][i]["us"] for r in range(args.world))
        us1 = max(results[r][i]["us_single"] for r in range(args.world))
        nbytes = T * args.hidden * esize  # each rank's bytes leaving its GPU
        out.append({"tokens": T, "bytes_per_rank": nbytes, "us_slowest_rank": us, "us_single_slowest_rank": us1,
                    "GBps_per_rank": nbytes / us * 1e-3,
                    "correct": all(results[r][i]["correct"] for r in range(args.world)),
                    **{f"estimate_us_at_{int(g)}": nbytes / g * 1e-3 for g in ESTIMATE_GBPS}})
    dev = torch.cuda.get_device_name(0) if args.backend == "nccl" else "cpu"
    return {"backend": args.backend, "world": args.world, "hidden": args.hidden, "dtype": args.dtype,
            "device": dev, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rows": out}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--tokens", default="128,1024,8192")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--inner", type=int, default=10, help="back-to-back collectives per timed rep")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before the run is abandoned")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    try:
        args.tokens = [int(v) for v in args.tokens.split(",") if v]
    except ValueError:
        ap.error("--tokens takes comma-separated integers")
    if args.world < 2:
        ap.error(f"--world must be >= 2 (an all-to-all needs another rank), got {args.world}")
    if not args.tokens or min(args.tokens) < 1:
        ap.error(f"--tokens must be positive, got {args.tokens}")
    if args.hidden < 1 or args.reps < 1 or args.inner < 1:
        ap.error("--hidden, --reps and --inner must be >= 1")
    if args.backend == "nccl":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < args.world:
            ap.error(f"--backend nccl needs one GPU per rank: --world {args.world}, {n} GPU(s) visible")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    res = run(args)
    print(f"all_to_all_single, {res['backend']}, {res['world']} ranks on {res['device']}, hidden {res['hidden']} "
          f"{res['dtype']}; every row leaves its rank; slowest rank's median of {args.reps} reps; 'one call': "
          f"after a barrier, 'back to back': {args.inner} calls per rep")
    hdr = ["tokens", "MiB per rank", "one call us", "back to back us", "GB/s per rank (back to back)",
           "estimate us @450", "estimate us @370", "data correct"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in res["rows"]:
        print(f"| {r['tokens']} | {r['bytes_per_rank'] / 2**20:.1f} | {r['us_single_slowest_rank']:.1f} | "
              f"{r['us_slowest_rank']:.1f} | {r['GBps_per_rank']:.1f} | {r['estimate_us_at_450']:.1f} | "
              f"{r['estimate_us_at_370']:.1f} | {'yes' if r['correct'] else 'NO'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if all(r["correct"] for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
