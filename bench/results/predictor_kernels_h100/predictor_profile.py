"""Per-kernel CUDA time of moebal's probe_predict op (torch profiler) at 8192 tokens, hidden 4096,
128 experts, top-8, bf16, for residual widths D: where the op's time goes beside the dispatch
estimate (181 us). Usage: python predictor_profile.py [--dims 256,1024]"""
import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from moebal.predictor_ops import probe_predict

ap = argparse.ArgumentParser()
ap.add_argument("--dims", default="0,256,1024")
args = ap.parse_args()
T, H, E, K = 8192, 4096, 128, 8
g = torch.Generator(device="cuda").manual_seed(0)
h = torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16)
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
for D in map(int, args.dims.split(",")):
    w_cat = (torch.randn(E + D, H, device="cuda", generator=g) / H ** 0.5).to(torch.bfloat16)
    bias = torch.zeros(E, device="cuda")
    w2 = (torch.randn(E, D, device="cuda", generator=g) / max(D, 1) ** 0.5).to(torch.bfloat16)
    for _ in range(5):
        probe_predict(h, w_cat, bias, w2, E, K)
    torch.cuda.synchronize()
    reps = 20
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush.zero_()
            probe_predict(h, w_cat, bias, w2, E, K)
        torch.cuda.synchronize()
    per = collections.defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name] += e.device_time / reps if hasattr(e, "device_time") else e.cuda_time / reps
    fills = [k for k in per if "FillFunctor" in k]
    flush_name = max(fills, key=lambda k: per[k]) if fills else None  # the 256 MiB flush, by far the largest fill
    total = sum(v for k, v in per.items() if k != flush_name)
    print(f"D={D}: kernels (us per call, the L2 flush excluded from the sum)")
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {v:8.1f}  {k[:140]}")
    print(f"  sum without the flush: {total:.1f} us", flush=True)
