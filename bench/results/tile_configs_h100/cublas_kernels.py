"""Which kernels cuBLAS (torch.matmul) and torch._grouped_mm launch for one expert's prefill GEMMs:
names carry the tile shape, cluster shape and schedule. Usage: python cublas_kernels.py"""
import torch
from torch.profiler import ProfilerActivity, profile

SHAPES = [  # (label, rows per expert, n, k)
    ("mixtral w13 1024 tokens", 256, 28672, 4096),
    ("mixtral w13 4096 tokens", 1024, 28672, 4096),
    ("mixtral w2 4096 tokens", 1024, 4096, 14336),
    ("mixtral w2 16384 tokens", 4096, 4096, 14336),
    ("deepseek-v3 w13 16384 tokens", 512, 4096, 7168),
]
for label, m, n, k in SHAPES:
    a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    w = torch.randn(n, k, device="cuda").to(torch.bfloat16)
    a8 = a.repeat(8, 1)
    w8 = w.unsqueeze(0).repeat(8, 1, 1)
    offs = torch.arange(1, 9, device="cuda", dtype=torch.int32) * m
    for _ in range(3):
        torch.matmul(a, w.T)
        torch._grouped_mm(a8, w8.transpose(1, 2), offs=offs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.matmul(a, w.T)
        torch.cuda.synchronize()
    mm = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch._grouped_mm(a8, w8.transpose(1, 2), offs=offs)
        torch.cuda.synchronize()
    gm = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
    print(f"{label} (m={m}, n={n}, k={k}):\n  matmul: {mm}\n  grouped_mm: {gm}", flush=True)
