"""Where an expert-parallel layer's GPU time goes (rank 0 of 2): torch.profiler around ep_moe_forward,
rows vs dedup exchange, synthetic uniform top-8 routing over 64 experts."""
import sys

import torch


def rank_fn(rank, world, a):
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from moebal.distributed import ep_moe_forward
    T, H, F, E, K = a
    dev = torch.device("cuda", rank)
    spr = E // world
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(T, H, generator=g).bfloat16().to(dev)
    ids = torch.rand(T, E, generator=g).argsort(1)[:, :K].int().to(dev)
    w = torch.rand(T, K, generator=g).to(dev)
    w13 = (torch.randn(spr, 2 * F, H) * H ** -0.5).bfloat16().to(dev)
    w2 = (torch.randn(spr, H, F) * F ** -0.5).bfloat16().to(dev)
    out = {}
    for dedup in (False, True):
        for _ in range(5):
            ep_moe_forward(x, w, ids, w13, w2, slots_per_rank=spr, dedup=dedup)
        torch.cuda.synchronize()
        dist.barrier()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                ep_moe_forward(x, w, ids, w13, w2, slots_per_rank=spr, dedup=dedup)
            torch.cuda.synchronize()
        out["dedup" if dedup else "rows"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=22,
                                                                       max_name_column_width=60)
    return out


if __name__ == "__main__":
    from moebal.distributed import run_ranks
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    res = run_ranks(rank_fn, world, (4096, 2048, 768, 64, 8), backend="nccl", timeout=300)
    for k, v in res[0].items():
        print(f"=== rank 0, {world} ranks, exchange {k} (3 calls)")
        print(v)
