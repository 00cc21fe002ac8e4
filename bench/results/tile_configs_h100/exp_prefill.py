"""DEV experiment: prefill/middle grouped GEMM configs vs cuBLAS, interleaved."""
import sys, os, json, time, torch
sys.path.insert(0, os.path.dirname(__file__))
import kernels_gemm as kg
from moebal import gemm_ops

def clock():
    try:
        return torch.cuda.clock_rate()
    except Exception as e:
        return None

def main():
    kg._flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    bw, peak = kg.measure_ceilings()
    m = torch.randn(8192, 8192, device="cuda").to(torch.bfloat16)
    # sustained: 300 back-to-back 8192^3 (~0.5 s)
    for _ in range(50): m @ m
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(300): m @ m
    e.record(); torch.cuda.synchronize()
    sus = 2 * 8192 ** 3 * 300 / (s.elapsed_time(e) * 1e-3)
    print(f"# {torch.cuda.get_device_name()} HBM {bw/1e12:.2f} TB/s, mm burst {peak/1e12:.0f} TF/s, sustained {sus/1e12:.0f} TF/s, clock {clock()}", flush=True)
    del m
    gen = torch.Generator().manual_seed(0)
    cases = [c.split(":") for c in sys.argv[1].split(",")]
    exps = [int(x) for x in os.environ.get("EXPS", "1,2,3,4").split(",") if x]
    out = []
    for model, tokens, routing in cases:
        hidden, ffn, E, k = kg.MODELS[model]
        counts = kg.route(int(tokens), E, k, routing == "zipf", gen)
        rows = int(counts.sum()); active = int((counts > 0).sum())
        offs_h = torch.zeros(E + 1, dtype=torch.int32); offs_h[1:] = torch.cumsum(counts, 0)
        offs = offs_h.cuda(); ends = offs[1:].contiguous()
        gmm = kg.grouped_mm_fn()
        for proj, (n, kk) in {"w13": (2 * ffn, hidden), "w2": (hidden, ffn)}.items():
            a = torch.randn(rows, kk, device="cuda").to(torch.bfloat16)
            w = torch.randn(E, n, kk, device="cuda", dtype=torch.bfloat16) * (kk ** -0.5)
            flops = 2.0 * rows * n * kk
            ref = gmm(a, w.transpose(1, 2), offs=ends)
            fns = {"grouped_mm": lambda: gmm(a, w.transpose(1, 2), offs=ends),
                   "large_m": lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_large_m"),
                   "auto": lambda: gemm_ops.grouped_gemm(a, w, offs)}
            for x in exps:
                fns[f"exp{x}"] = kg.with_env("MOEBAL_EXP_LARGE", str(x), lambda: gemm_ops.grouped_gemm(a, w, offs, kernel="hopper_large_m"))
            segs = [(g, int(offs_h[g]), int(offs_h[g + 1])) for g in range(E) if counts[g] > 0]
            yl = torch.empty(rows, n, device="cuda", dtype=torch.bfloat16)
            def loop():
                for g, s0, e0 in segs:
                    torch.matmul(a[s0:e0], w[g].T, out=yl[s0:e0])
                return yl
            fns["cublas_loop"] = loop
            if routing == "balanced" and int(counts.min()) == int(counts.max()):
                mm = int(counts[0]); a3 = a.view(E, mm, kk); wt = w.transpose(1, 2)
                fns["cublas_bmm"] = lambda: torch.bmm(a3, wt).view(rows, n)
            ok = {}
            for name, fn in fns.items():
                try:
                    err = ((fn().float() - ref.float()).norm() / ref.float().norm()).item()
                    assert err < 1e-2, err
                    ok[name] = fn
                except Exception as ex:
                    print(f"ERROR {model} {tokens} {proj} {name}: {ex}", flush=True)
            times, errs = kg.time_fns(ok, min_reps=8)
            base = times.get("large_m")
            line = f"{model:14s} T={tokens:>5s} {routing:8s} {proj} rows/exp={rows/active:7.0f} n={n} k={kk} floor={max(flops/peak, (active*n*kk*2+rows*(n+kk)*2)/bw)*1e6:8.1f}us |"
            for name, t in times.items():
                line += f" {name} {t*1e6:8.1f}us {flops/t/1e12:4.0f}TF x{base/t:.2f} |"
                out.append(dict(model=model, tokens=int(tokens), routing=routing, op=proj, impl=name, us=t*1e6, tflops=flops/t/1e12, rows=rows, active=active, n=n, k=kk))
            print(line, flush=True)
            del a, w, ref, yl
            torch.cuda.empty_cache()
    print(f"# clock after {clock()}")
    json.dump(dict(bw=bw, peak=peak, sustained=sus, results=out), open(sys.argv[2], "w"))

main()
