import os, sys, traceback, torch
from moebal import gemm_ops, moe_ops
print("devices", torch.cuda.device_count(), "CUDA_MODULE_LOADING", os.environ.get("CUDA_MODULE_LOADING"), flush=True)
def attempt(label, dev, mode, fn_name):
    torch.cuda.set_device(dev)
    d = torch.device("cuda", dev)
    H, F, g, n = 1024, 512, 8, 64
    w13 = (torch.randn(g, 2 * F, H, device=d) * 0.03).bfloat16(); w2 = (torch.randn(g, H, F, device=d) * 0.03).bfloat16()
    x = torch.randn(g * n, H, device=d).bfloat16(); off = torch.arange(0, g * n + 1, n, device=d, dtype=torch.int32)
    ids = torch.randint(0, g, (g * n, 2), device=d, dtype=torch.int32); wt = torch.rand(g * n, 2, device=d)
    call = (lambda: gemm_ops.expert_ffn(x, w13, w2, off)) if fn_name == "ffn" else (lambda: moe_ops.moe_forward(x, w13, w2, topk_ids=ids, topk_weights=wt))
    s = torch.cuda.Stream(d); s.wait_stream(torch.cuda.current_stream(d))
    with torch.cuda.stream(s):
        for _ in range(2): call()
    torch.cuda.current_stream(d).wait_stream(s); torch.cuda.synchronize(d)
    gr = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(gr, capture_error_mode=mode):
            call()
        gr.replay(); torch.cuda.synchronize(d)
        print(label, dev, mode, fn_name, "OK", flush=True)
    except Exception as e:
        print(label, dev, mode, fn_name, "FAIL", type(e).__name__, str(e).splitlines()[0][:100], flush=True)
        torch.cuda.synchronize(d)
for fn in ("ffn", "moe"):
    for mode in ("global", "thread_local", "relaxed"):
        for dev in range(torch.cuda.device_count()):
            try:
                attempt(sys.argv[1] if len(sys.argv) > 1 else "run", dev, mode, fn)
            except Exception as e:
                print("outer", dev, mode, fn, type(e).__name__, str(e).splitlines()[0][:100], flush=True)
