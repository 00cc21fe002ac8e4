"""Expert parallelism over torch.distributed: one MoE layer whose experts (and their replicas) are
spread over ranks by a :class:`moebal.Placement`, plus a launcher of one process per rank.

:func:`ep_moe_forward` is the layer each rank runs on its own tokens:

1. every (token, k) has a physical slot (from :func:`moebal.assign_ops.assign_replicas` or any
   policy); slot ``s`` lives on rank ``s // slots_per_rank``;
2. the (token, k) rows are sorted by destination rank, and their counts are exchanged
   (``all_to_all_single`` of ``world`` integers);
3. the rows and their local slot ids go to their ranks (two ``all_to_all_single`` with uneven
   splits);
4. each rank runs its slots' experts on what it received: one grouped ``moe_forward`` with one
   expert per row and weight 1;
5. the expert outputs come back the same way, and each source rank adds them, scaled by the
   gate weights, into its tokens' rows.

The result equals the single-process layer ``sum_k w_k * expert[id_k](x)`` whenever every copy of an
expert holds the same weights. The split sizes are read on the host (one synchronisation per
exchange); this is the plain NCCL path that measurements and tests are built on, not a fused
dispatch kernel. Works on NCCL (CUDA tensors) and gloo (CPU tensors, float32, used by the tests).

:func:`run_ranks` starts ``world`` processes, initialises the process group in each (NCCL on GPU
``rank``, or gloo), runs a module-level function and returns every rank's result. If a rank
fails, its error is raised in the parent; the parent never waits forever on a rank that died.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, List, Optional, Sequence

import torch

from moebal import _core


def _err(msg: str) -> Exception:
    return _core.MoebalValueError(msg)


def _check_ep_args(hidden, topk_ids, topk_weights, slot_ids, w13_local, w2_local, slots_per_rank, world):
    if hidden.dim() != 2:
        raise _err(f"ep_moe_forward: hidden must be [tokens, hidden], got {tuple(hidden.shape)}")
    T, H = hidden.shape
    for name, t in (("topk_weights", topk_weights), ("slot_ids", slot_ids)):
        if t.dim() != 2 or t.shape[0] != T:
            raise _err(f"ep_moe_forward: {name} must be [{T}, K], got {tuple(t.shape)}")
    if topk_weights.shape != slot_ids.shape:
        raise _err(f"ep_moe_forward: topk_weights {tuple(topk_weights.shape)} and slot_ids "
                   f"{tuple(slot_ids.shape)} differ")
    if topk_ids is not None and topk_ids.shape != slot_ids.shape:
        raise _err(f"ep_moe_forward: topk_ids {tuple(topk_ids.shape)} and slot_ids {tuple(slot_ids.shape)} differ")
    if slot_ids.dtype not in (torch.int32, torch.int64):
        raise _err(f"ep_moe_forward: slot_ids must be int32 or int64, got {slot_ids.dtype}")
    if slots_per_rank < 1:
        raise _err(f"ep_moe_forward: slots_per_rank must be >= 1, got {slots_per_rank}")
    if w13_local.dim() != 3 or w2_local.dim() != 3 or w13_local.shape[0] != slots_per_rank \
            or w2_local.shape[0] != slots_per_rank:
        raise _err(f"ep_moe_forward: w13_local / w2_local must hold this rank's {slots_per_rank} slots, got "
                   f"{tuple(w13_local.shape)} / {tuple(w2_local.shape)}")
    if w13_local.shape[2] != H or w2_local.shape[1] != H or w13_local.shape[1] != 2 * w2_local.shape[2]:
        raise _err(f"ep_moe_forward: w13_local {tuple(w13_local.shape)} / w2_local {tuple(w2_local.shape)} do not "
                   f"fit hidden {H} ([S, 2F, H] and [S, H, F])")
    for name, t in (("topk_weights", topk_weights), ("slot_ids", slot_ids), ("w13_local", w13_local),
                    ("w2_local", w2_local)):
        if t.device != hidden.device:
            raise _err(f"ep_moe_forward: {name} is on {t.device}, hidden on {hidden.device}")
    if slot_ids.numel():
        lo, hi = int(slot_ids.min()), int(slot_ids.max())
        if lo < 0 or hi >= slots_per_rank * world:
            raise _err(f"ep_moe_forward: slot ids must be in [0, {slots_per_rank * world}) "
                       f"({world} ranks x {slots_per_rank} slots), got [{lo}, {hi}]")


def ep_moe_forward(hidden: torch.Tensor, topk_weights: torch.Tensor, slot_ids: torch.Tensor,
                   w13_local: torch.Tensor, w2_local: torch.Tensor, *, slots_per_rank: int,
                   group: Any = None, topk_ids: Optional[torch.Tensor] = None,
                   timings: Optional[dict] = None, dedup: bool = False) -> torch.Tensor:
    """One expert-parallel MoE layer on this rank's tokens (see the module docstring).

    ``hidden`` [T, H] this rank's tokens; ``topk_weights`` [T, K] gate weights; ``slot_ids`` [T, K]
    physical slot of each (token, k), in ``[0, world * slots_per_rank)``; ``w13_local`` [S, 2F, H] and
    ``w2_local`` [S, H, F]: the weights of this rank's ``S = slots_per_rank`` slots, in slot order.
    ``topk_ids`` (optional) is only shape-checked. Every rank of ``group`` must call this together.
    ``timings`` (CUDA only): gets CUDA events ``start``, ``experts_start``, ``experts_end``, ``end``.
    ``dedup``: send a token once per destination rank instead of once per (token, k). The
    receiving rank then applies all of that token's experts it holds, with their gate weights
    (padding ids -1), and returns one partial sum. Fewer bytes both ways whenever two of a token's
    experts share a rank. The partial sums are rounded to the hidden dtype before the source adds
    them. Tested for equality with the single-process layer; not yet timed on GPUs.
    Returns [T, H] in ``hidden``'s dtype.
    """
    import torch.distributed as dist

    from moebal.moe_ops import moe_forward

    if not dist.is_initialized():
        raise _err("ep_moe_forward: torch.distributed is not initialised (see moebal.distributed.run_ranks)")
    world = dist.get_world_size(group)
    _check_ep_args(hidden, topk_ids, topk_weights, slot_ids, w13_local, w2_local, slots_per_rank, world)
    dev = hidden.device
    ev = None
    if timings is not None and dev.type == "cuda":
        ev = {k: torch.cuda.Event(enable_timing=True) for k in ("start", "experts_start", "experts_end", "end")}
        ev["start"].record()
    T, K = slot_ids.shape
    if dedup:
        y = _ep_dedup(hidden, topk_weights, slot_ids, w13_local, w2_local, slots_per_rank, world, group, ev)
        if ev is not None:
            ev["end"].record()
            timings.update(ev)
        return y
    flat = slot_ids.reshape(-1).long()
    dest = torch.div(flat, slots_per_rank, rounding_mode="floor")
    order = torch.argsort(dest, stable=True)
    send_counts = torch.bincount(dest, minlength=world)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()  # host sync: the uneven split sizes
    token_of = torch.div(order, K, rounding_mode="floor")
    rows = hidden.index_select(0, token_of)
    local = (flat.index_select(0, order) % slots_per_rank).to(torch.int32)
    n_in = sum(recv)
    rows_in = torch.empty(n_in, hidden.shape[1], dtype=hidden.dtype, device=dev)
    local_in = torch.empty(n_in, dtype=torch.int32, device=dev)
    dist.all_to_all_single(rows_in, rows, recv, send, group=group)
    dist.all_to_all_single(local_in, local, recv, send, group=group)
    if ev is not None:
        ev["experts_start"].record()
    if n_in:
        out_in = moe_forward(rows_in, w13_local, w2_local, topk_ids=local_in.view(-1, 1),
                             topk_weights=torch.ones(n_in, 1, dtype=torch.float32, device=dev))
    else:
        out_in = rows_in
    if ev is not None:
        ev["experts_end"].record()
    back = torch.empty_like(rows)
    dist.all_to_all_single(back, out_in, send, recv, group=group)
    w = topk_weights.reshape(-1).index_select(0, order).float().unsqueeze(1)
    y = torch.zeros(T, hidden.shape[1], dtype=torch.float32, device=dev)
    y.index_add_(0, token_of, back.float() * w)
    if ev is not None:
        ev["end"].record()
        timings.update(ev)
    return y.to(hidden.dtype)


def _ep_dedup(hidden, topk_weights, slot_ids, w13_local, w2_local, spr: int, world: int, group, ev):
    """ep_moe_forward with one row per (token, destination rank): see its ``dedup``."""
    import torch.distributed as dist

    from moebal.moe_ops import moe_forward

    dev = hidden.device
    T, K = slot_ids.shape
    s = slot_ids.long()
    dest = torch.div(s, spr, rounding_mode="floor")
    tok = torch.arange(T, device=dev).unsqueeze(1).expand(T, K)
    key = (dest * T + tok).reshape(-1)  # sorted unique keys: by destination rank, then token
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    n = uniq.numel()
    pair_dest = torch.div(uniq, T, rounding_mode="floor")
    pair_tok = uniq % T
    col = torch.arange(K, device=dev).repeat(T)
    meta = torch.full((n, 2 * K), -1, dtype=torch.int32, device=dev)  # K local ids, then K weights' bits
    meta[:, K:] = 0
    meta[inv, col] = (s.reshape(-1) % spr).to(torch.int32)
    meta[inv, K + col] = topk_weights.reshape(-1).float().contiguous().view(torch.int32)
    send_counts = torch.bincount(pair_dest, minlength=world)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()  # host sync: the uneven split sizes
    n_in = sum(recv)
    rows_in = torch.empty(n_in, hidden.shape[1], dtype=hidden.dtype, device=dev)
    meta_in = torch.empty(n_in, 2 * K, dtype=torch.int32, device=dev)
    dist.all_to_all_single(rows_in, hidden.index_select(0, pair_tok), recv, send, group=group)
    dist.all_to_all_single(meta_in, meta, recv, send, group=group)
    if ev is not None:
        ev["experts_start"].record()
    if n_in:
        out_in = moe_forward(rows_in, w13_local, w2_local, topk_ids=meta_in[:, :K].contiguous(),
                             topk_weights=meta_in[:, K:].contiguous().view(torch.float32))
    else:
        out_in = rows_in
    if ev is not None:
        ev["experts_end"].record()
    back = torch.empty(n, hidden.shape[1], dtype=hidden.dtype, device=dev)
    dist.all_to_all_single(back, out_in, send, recv, group=group)
    y = torch.zeros(T, hidden.shape[1], dtype=torch.float32, device=dev)
    y.index_add_(0, pair_tok, back.float())
    return y.to(hidden.dtype)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _to_host(x: Any) -> Any:
    """Tensors (anywhere in tuples, lists and dicts) as numpy arrays: a tensor sent through a
    multiprocessing queue travels by shared memory, which is gone once the rank's process exits."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)):
        return type(x)(_to_host(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_host(v) for k, v in x.items()}
    return x


def _entry(rank: int, world: int, backend: str, port: int, target: Callable, args: Any, queue) -> None:
    import torch.distributed as dist

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        kw = {}
        if backend == "nccl":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
            kw["device_id"] = device
        dist.init_process_group(backend, rank=rank, world_size=world, **kw)
        try:
            result = target(rank, world, args)
        finally:
            dist.destroy_process_group()
        queue.put((rank, _to_host(result), None))
    except Exception as e:  # reported by the parent, which must not wait forever for this rank
        queue.put((rank, None, f"{type(e).__name__}: {e}"))


def run_ranks(target: Callable[[int, int, Any], Any], world: int, args: Any = None, *, backend: str = "gloo",
              timeout: float = 300.0) -> List[Any]:
    """Run ``target(rank, world, args)`` in ``world`` spawned processes with the process group
    initialised (``nccl``: rank r on GPU r; ``gloo``: CPU) and return the results in rank order
    (tensors in a result come back as numpy arrays).
    ``target`` must be a module-level function and ``args`` picklable. Raises RuntimeError naming
    the failed ranks, or the timeout, after stopping every process."""
    import torch.multiprocessing as mp

    if world < 1:
        raise _err(f"run_ranks: world must be >= 1, got {world}")
    if backend not in ("nccl", "gloo"):
        raise _err(f"run_ranks: backend must be nccl or gloo, got {backend!r}")
    if backend == "nccl":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < world:
            raise _err(f"run_ranks: nccl needs one GPU per rank: world {world}, {n} GPU(s) visible")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, backend, port, target, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results, errors = {}, []
    deadline = time.time() + timeout
    while len(results) + len(errors) < world:
        left = deadline - time.time()
        if left <= 0:
            if not errors:
                errors.append(f"timed out after {timeout:.0f} s")
            break
        try:
            rank, res, err = queue.get(timeout=min(left, 5.0))
        except Exception:  # queue.Empty: check that nobody died silently
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
            if dead:
                errors.append(f"rank(s) {dead} exited without a result")
                break
            continue
        if err:  # the others may now fail too (a peer gone) or wait in a collective forever:
            errors.append(f"rank {rank}: {err}")  # collect for a few seconds more, then stop them all
            deadline = min(deadline, time.time() + 3.0)
        else:
            results[rank] = res
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError("; ".join(errors))
    return [results[r] for r in range(world)]


def local_slot_weights(w13: torch.Tensor, w2: torch.Tensor, phy2log: Sequence[int], rank: int,
                       slots_per_rank: int) -> tuple:
    """This rank's slot weights from the logical experts' ``w13`` [E, 2F, H] / ``w2`` [E, H, F] and
    one layer's ``phy2log`` [S] (slot -> logical expert): copies of an expert share its weights."""
    p = torch.as_tensor(list(phy2log), dtype=torch.long)
    if p.numel() < (rank + 1) * slots_per_rank:
        raise _err(f"local_slot_weights: phy2log has {p.numel()} slots, rank {rank} needs "
                   f"[{rank * slots_per_rank}, {(rank + 1) * slots_per_rank})")
    idx = p[rank * slots_per_rank:(rank + 1) * slots_per_rank]
    if int(idx.min()) < 0 or int(idx.max()) >= w13.shape[0]:
        raise _err(f"local_slot_weights: phy2log names experts outside [0, {w13.shape[0]})")
    idx = idx.to(w13.device)
    return w13.index_select(0, idx).contiguous(), w2.index_select(0, idx).contiguous()
