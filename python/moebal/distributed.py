"""Expert parallelism over torch.distributed: one MoE layer whose experts (and their replicas) are
spread over ranks by a :class:`moebal.Placement`, plus a launcher of one process per rank.

:func:`ep_moe_forward` is the layer each rank runs on its own tokens:

1. every (token, k) has a physical slot (from :func:`moebal.assign_ops.assign_replicas` or any
   policy); slot ``s`` lives on rank ``s // slots_per_rank``;
2. the rows to send, sorted by destination rank: one per (token, k) (``exchange="rows"``), one per
   (token, destination rank) (``"dedup"``), or every token to every rank at a fixed place
   (``"dense"``, CUDA-graph capturable); each carries the local slot ids and gate weights of the
   experts it meets there (-1 / 0 padded);
3. a small header is exchanged (``all_to_all_single``): the row counts, and what each rank checked
   (bad input or disagreeing ranks make every rank raise here, together); then the rows and their
   ids and weights (two ``all_to_all_single`` with uneven splits);
4. each rank runs its slots' experts on what it received, weighted: one grouped ``moe_forward``;
5. the results come back the same way, and each source rank sums them into its tokens' rows
   (``unpermute_combine``: one pass, float32 sums, no atomics).

The result equals the single-process layer ``sum_k w_k * expert[id_k](x)`` whenever every copy of an
expert holds the same weights. The split sizes are read on the host, once per call (the only
device synchronisation); this is the plain NCCL path that measurements and tests are built on, not a fused
dispatch kernel. Works on NCCL (CUDA tensors) and gloo (CPU tensors, used by the tests).

:func:`run_ranks` starts ``world`` processes, initialises the process group in each (NCCL on GPU
``rank``, or gloo), runs a module-level function and returns every rank's result. If a rank
fails, its error is raised in the parent; the parent never waits forever on a rank that died.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import torch

from moebal import _core


def _err(msg: str) -> Exception:
    return _core.MoebalValueError(msg)


def _check_ep_args(hidden, topk_weights, slot_ids, w13_local, w2_local, slots_per_rank, header_device):
    """This rank's own checks (shapes, dtypes, devices; no device synchronisation). Raises."""
    for name, t in (("hidden", hidden), ("topk_weights", topk_weights), ("slot_ids", slot_ids),
                    ("w13_local", w13_local), ("w2_local", w2_local)):
        if not isinstance(t, torch.Tensor):
            raise _err(f"ep_moe_forward: {name} must be a tensor, got {type(t).__name__}")
    if hidden.dim() != 2:
        raise _err(f"ep_moe_forward: hidden must be [tokens, hidden], got {tuple(hidden.shape)}")
    T, H = hidden.shape
    for name, t in (("topk_weights", topk_weights), ("slot_ids", slot_ids)):
        if t.dim() != 2 or t.shape[0] != T:
            raise _err(f"ep_moe_forward: {name} must be [{T}, K], got {tuple(t.shape)}")
    if topk_weights.shape != slot_ids.shape:
        raise _err(f"ep_moe_forward: topk_weights {tuple(topk_weights.shape)} and slot_ids "
                   f"{tuple(slot_ids.shape)} differ")
    if slot_ids.dtype not in (torch.int32, torch.int64):
        raise _err(f"ep_moe_forward: slot_ids must be int32 or int64, got {slot_ids.dtype}")
    if not topk_weights.is_floating_point():
        raise _err(f"ep_moe_forward: topk_weights must be floating point, got {topk_weights.dtype}")
    if slots_per_rank < 1:
        raise _err(f"ep_moe_forward: slots_per_rank must be >= 1, got {slots_per_rank}")
    if w13_local.dim() != 3 or w2_local.dim() != 3 or w13_local.shape[0] != slots_per_rank \
            or w2_local.shape[0] != slots_per_rank:
        raise _err(f"ep_moe_forward: w13_local / w2_local must hold this rank's {slots_per_rank} slots, got "
                   f"{tuple(w13_local.shape)} / {tuple(w2_local.shape)}")
    if w13_local.shape[2] != H or w2_local.shape[1] != H or w13_local.shape[1] != 2 * w2_local.shape[2]:
        raise _err(f"ep_moe_forward: w13_local {tuple(w13_local.shape)} / w2_local {tuple(w2_local.shape)} do not "
                   f"fit hidden {H} ([S, 2F, H] and [S, H, F])")
    for name, t in (("hidden", hidden), ("w13_local", w13_local), ("w2_local", w2_local)):
        if t.dtype != torch.bfloat16:
            raise _err(f"ep_moe_forward: {name} must be bfloat16, got {t.dtype}")
    for name, t in (("topk_weights", topk_weights), ("slot_ids", slot_ids), ("w13_local", w13_local),
                    ("w2_local", w2_local)):
        if t.device != hidden.device:
            raise _err(f"ep_moe_forward: {name} is on {t.device}, hidden on {hidden.device}")
    if hidden.device != header_device:
        raise _err(f"ep_moe_forward: hidden is on {hidden.device}, but this rank's process group communicates "
                   f"on {header_device}")


# Per-destination header of the first exchange: rows sent, refused, hidden size, top-k, slots per
# rank, exchange, tokens. Every rank learns every rank's header, so all of them take the same
# decision: run the layer, or raise together (never a peer left waiting).
_HDR = 7
EXCHANGES = ("rows", "dedup", "dense")

# Signatures (group, exchange, world, tokens, hidden, top-k, slots per rank) that every rank agreed
# on in an eager ``dense`` call: the precondition of capturing that call in a CUDA graph.
_agreed_dense: set = set()


def _agree(hdr_in: list, own_err: Optional[str]) -> None:
    """Raises on every rank alike when a rank refused its inputs or the ranks disagree (every rank
    sees the same headers, so every rank takes the same decision)."""
    refused = [r for r, h in enumerate(hdr_in) if h[1]]
    if refused:
        if own_err:
            raise _err(own_err + f" (rank(s) {refused} refused their inputs, so no rank ran the layer)")
        raise _err(f"ep_moe_forward: rank(s) {refused} refused their inputs, so no rank ran the layer")
    cols = [(2, "hidden size"), (4, "slots_per_rank"), (5, "exchange")]
    exchange = EXCHANGES[hdr_in[0][5]] if all(h[5] == hdr_in[0][5] for h in hdr_in) else None
    if exchange in ("dedup", "dense"):
        cols.append((3, f"top-k (with exchange={exchange!r})"))
    if exchange == "dense":
        cols.append((6, "tokens per rank (with exchange='dense')"))
    for col, name in cols:
        seen = [h[col] for h in hdr_in]
        if any(v != seen[0] for v in seen):
            if col == 5:
                seen = [EXCHANGES[v] for v in seen]
            raise _err(f"ep_moe_forward: the ranks disagree on {name}: {seen} (rank order)")


class _Layout(NamedTuple):
    """What one exchange sends and how the results come back, built on the device without a host read.
    ``meta`` [rows, 2 * width] int32: local slot ids (-1: none), then the gate weights' bits, in send
    order (the first ``sum(counts)`` rows are sent); ``row_tok``: the token of each sent row (None for
    dense, which sends every token to every rank); ``back_index`` [T, kc]: for the combine, the rows
    of the returned buffer that hold each token's results (rows >= ``sum(counts)``: none)."""
    kc: int
    counts: torch.Tensor
    meta: torch.Tensor
    row_tok: Optional[torch.Tensor]
    back_index: torch.Tensor


def _meta(rows: int, width: int, row: torch.Tensor, col: torch.Tensor, local, wbits) -> torch.Tensor:
    meta = torch.zeros(rows, 2 * width, dtype=torch.int32, device=local.device)
    meta[:, :width] = -1
    meta[row, col] = local.reshape(-1)
    meta[row, width + col] = wbits.reshape(-1)
    return meta


def _layout_rows(dest, local, wbits, world) -> _Layout:
    """One row per (token, k), in destination order."""
    T, K = dest.shape
    dev = dest.device
    counts = torch.zeros(world, dtype=torch.int64, device=dev).scatter_add_(
        0, dest.reshape(-1), torch.ones(T * K, dtype=torch.int64, device=dev))
    order = torch.argsort(dest.reshape(-1), stable=True)
    row = torch.empty_like(order).scatter_(0, order, torch.arange(T * K, device=dev))
    row_tok = torch.arange(T, device=dev).unsqueeze(1).expand(T, K).reshape(-1)[order]
    meta = _meta(T * K, 1, row, torch.zeros(T * K, dtype=torch.long, device=dev), local, wbits)
    return _Layout(K, counts, meta, row_tok, row.view(T, K).to(torch.int32))


def _layout_dedup(dest, local, wbits, world) -> _Layout:
    """One row per (token, destination rank), in (destination, token) order, carrying the ids and
    weights of every expert of the token there."""
    T, K = dest.shape
    dev = dest.device
    kc = min(K, world)  # most ranks one token meets; at most T * kc rows
    tok = torch.arange(T, device=dev)
    present = torch.zeros(world, T, dtype=torch.int64, device=dev)
    present.scatter_(0, dest.t(), 1)
    flat = present.reshape(-1)
    pos = torch.cumsum(flat, 0) - 1  # the row of (d, t) when present
    row_tok = torch.zeros(T * kc + 1, dtype=torch.long, device=dev)  # the last entry takes absent pairs
    row_tok.scatter_(0, torch.where(flat > 0, pos, T * kc), tok.repeat(world))
    row = pos.view(world, T).gather(0, dest.t()).t().reshape(-1)  # the row of (t, k)
    meta = _meta(T * kc, K, row, torch.arange(K, device=dev).repeat(T), local, wbits)
    # back_index[t, j]: the row of the j-th rank the token met; T * kc - 1 marks none (>= the rows
    # sent whenever a token meets fewer than kc ranks, so the combine skips it)
    j = torch.cumsum(present, 0) - 1
    back = torch.full((T * kc + 1,), T * kc - 1, dtype=torch.int32, device=dev)
    back.scatter_(0, torch.where(present > 0, tok * kc + j, T * kc).reshape(-1), pos.to(torch.int32))
    return _Layout(kc, present.sum(1), meta, row_tok, back[:-1].view(T, kc))


def _layout_dense(dest, local, wbits, world) -> _Layout:
    """Every token to every rank: rank d receives row t at d * T + t, with the ids of the token's
    experts there (all -1 where none). Fixed shapes: capturable."""
    T, K = dest.shape
    dev = dest.device
    tok = torch.arange(T, device=dev)
    meta = torch.zeros(world, T, 2 * K, dtype=torch.int32, device=dev)
    meta[:, :, :K] = -1
    kk = torch.arange(K, device=dev).expand(T, K)
    tt = tok.unsqueeze(1).expand(T, K)
    meta[dest, tt, kk] = local
    meta[dest, tt, K + kk] = wbits
    back_index = (torch.arange(world, device=dev).unsqueeze(0) * T + tok.unsqueeze(1)).to(torch.int32)
    return _Layout(world, torch.full((world,), T, dtype=torch.int64, device=dev), meta.view(world * T, 2 * K),
                   None, back_index)


_LAYOUTS = {"rows": _layout_rows, "dedup": _layout_dedup, "dense": _layout_dense}


def ep_moe_forward(hidden: torch.Tensor, topk_weights: torch.Tensor, slot_ids: torch.Tensor,
                   w13_local: torch.Tensor, w2_local: torch.Tensor, *, slots_per_rank: int,
                   group: Any = None, timings: Optional[dict] = None, exchange: str = "rows") -> torch.Tensor:
    """One expert-parallel MoE layer on this rank's tokens (see the module docstring).

    ``hidden`` [T, H] bfloat16, this rank's tokens; ``topk_weights`` [T, K] gate weights; ``slot_ids``
    [T, K] physical slot of each (token, k), in ``[0, world * slots_per_rank)``; ``w13_local`` [S, 2F, H]
    and ``w2_local`` [S, H, F] bfloat16: the weights of this rank's ``S = slots_per_rank`` slots, in
    slot order. Every rank of ``group`` must call this together.
    ``timings`` (CUDA only, not under capture): gets CUDA events ``start``, ``experts_start``,
    ``experts_end``, ``end``.

    ``exchange``:

    - ``"rows"``: one row per (token, k), sorted by destination rank.
    - ``"dedup"``: one row per (token, destination rank); that rank applies all of the token's
      experts it holds and returns one partial sum. Fewer bytes both ways whenever two of a token's
      experts share a rank.
    - ``"dense"``: every token's row goes to every rank, at a fixed place (rank d receives the
      sender's tokens in order), with the ids of the experts it meets there (all -1 where none).
      Every shape is fixed by (ranks, T, H, K), so nothing is read on the host and the call can be
      captured in a CUDA graph (after one eager call with the same shapes, which checks that the
      ranks agree, T included). It moves ``world * T`` rows each way: meant for decode batches on
      a few ranks, where the eager exchanges' host work, not bytes, sets the time.

    The weighted expert outputs are rounded to bfloat16 on the expert's rank (per row, or per
    partial sum) and summed in float32 at the source by moebal's ``unpermute_combine``. Returns
    [T, H] bfloat16.

    Bad input on any rank (a wrong shape, dtype or device, a slot id out of range) or ranks that
    disagree (hidden size, ``slots_per_rank``, ``exchange``; the top-k with ``dedup`` / ``dense``;
    T with ``dense``) make every rank raise after the first, small exchange: no rank is left waiting
    in a collective. The split sizes are read on the host once per call, with that exchange. Under
    CUDA-graph capture (``dense`` only) there is no such exchange: the shapes were agreed by the
    eager call, and a token with a slot id out of range gets a NaN row instead of an error.
    """
    import torch.distributed as dist

    from moebal.moe_ops import moe_forward, unpermute_combine

    if not dist.is_initialized():
        raise _err("ep_moe_forward: torch.distributed is not initialised (see moebal.distributed.run_ranks)")
    world = dist.get_world_size(group)
    if dist.get_backend(group) == "nccl":
        hdev = torch.device("cuda", torch.cuda.current_device())
    else:
        hdev = torch.device("cpu")
    capturing = hdev.type == "cuda" and torch.cuda.is_current_stream_capturing()
    own_err = None
    try:
        if exchange not in EXCHANGES:
            raise _err(f"ep_moe_forward: exchange must be one of {', '.join(EXCHANGES)}, got {exchange!r}")
        _check_ep_args(hidden, topk_weights, slot_ids, w13_local, w2_local, slots_per_rank, hdev)
    except _core.MoebalValueError as e:
        own_err = str(e)
    if capturing:  # no collective may be added to the graph unless every rank's call is known good
        if own_err is None and exchange != "dense":
            own_err = (f"ep_moe_forward: exchange={exchange!r} reads split sizes on the host and cannot be "
                       "captured in a CUDA graph; use exchange='dense'")
        if own_err is None and (id(group), world) + tuple(slot_ids.shape) + (hidden.shape[1], slots_per_rank) \
                not in _agreed_dense:
            own_err = ("ep_moe_forward: under CUDA-graph capture the ranks' agreement cannot be checked; "
                       "call it once outside capture with the same shapes first")
        if own_err is not None:
            raise _err(own_err)
        if timings is not None:
            raise _err("ep_moe_forward: timings cannot be recorded under CUDA-graph capture")
    if own_err is not None:  # take part in the first exchange only, to tell the others
        hdr = torch.zeros(world, _HDR, dtype=torch.int64, device=hdev)
        hdr[:, 1] = 1
        hdr_in = torch.empty_like(hdr)
        dist.all_to_all_single(hdr_in, hdr, group=group)
        _agree(hdr_in.tolist(), own_err)
        raise AssertionError("unreachable: this rank refused its inputs")
    dev = hidden.device
    ev = None
    if timings is not None and dev.type == "cuda":
        ev = {k: torch.cuda.Event(enable_timing=True) for k in ("start", "experts_start", "experts_end", "end")}
        ev["start"].record()
    T, K = slot_ids.shape
    H = hidden.shape[1]
    width = 1 if exchange == "rows" else K
    s = slot_ids.long()
    bad_tok = ((s < 0) | (s >= slots_per_rank * world)).any(1)
    bad = bad_tok.any()
    dest = torch.div(s, slots_per_rank, rounding_mode="floor").clamp_(0, world - 1)
    local = (s % slots_per_rank).to(torch.int32)
    wbits = topk_weights.float().contiguous().view(torch.int32)
    # Everything that does not need the host's view of the counts is built before the one host read.
    lay = _LAYOUTS[exchange](dest, local, wbits, world)
    counts = lay.counts
    ones = torch.ones(T, lay.kc, dtype=torch.float32, device=dev)
    valid = torch.cat([counts.new_zeros(1), counts.sum(0, keepdim=True)]).to(torch.int32)  # combine: rows < sent
    if capturing:  # dense, agreed in an eager call: every split is T rows
        send = recv = [T] * world
    else:
        hdr = torch.zeros(world, _HDR, dtype=torch.int64, device=hdev)
        hdr[:, 0] = torch.where(bad, 0, counts)
        hdr[:, 1] = bad.long()
        hdr[:, 2], hdr[:, 3], hdr[:, 4] = H, K, slots_per_rank
        hdr[:, 5], hdr[:, 6] = EXCHANGES.index(exchange), T
        hdr_in = torch.empty_like(hdr)
        dist.all_to_all_single(hdr_in, hdr, group=group)
        both = torch.stack([hdr, hdr_in]).tolist()  # the one host synchronisation: the uneven split sizes
        if both[0][0][1]:
            lo, hi = int(s.min()), int(s.max())
            own_err = (f"ep_moe_forward: slot ids must be in [0, {slots_per_rank * world}) ({world} ranks x "
                       f"{slots_per_rank} slots), got [{lo}, {hi}]")
        _agree(both[1], own_err)
        send, recv = [h[0] for h in both[0]], [h[0] for h in both[1]]
        if exchange == "dense":
            _agreed_dense.add((id(group), world, T, K, H, slots_per_rank))
    n, n_in = sum(send), sum(recv)
    if exchange == "dense":  # (T = 1 too: the expanded view must be a copy)
        send_rows = hidden.unsqueeze(0).expand(world, T, H).contiguous().view(world * T, H)
    else:
        send_rows = hidden.index_select(0, lay.row_tok[:n])
    rows_in = torch.empty(n_in, H, dtype=hidden.dtype, device=dev)
    meta_in = torch.empty(n_in, 2 * width, dtype=torch.int32, device=dev)
    dist.all_to_all_single(rows_in, send_rows, recv, send, group=group)
    dist.all_to_all_single(meta_in, lay.meta[:n], recv, send, group=group)
    if ev is not None:
        ev["experts_start"].record()
    if n_in:
        out_in = moe_forward(rows_in, w13_local, w2_local, topk_ids=meta_in[:, :width].contiguous(),
                             topk_weights=meta_in[:, width:].contiguous().view(torch.float32))
    else:
        out_in = rows_in
    if ev is not None:
        ev["experts_end"].record()
    # the combine (moebal's unpermute_combine) wants T x kc rows: the results fill the first n
    back = torch.empty(T * lay.kc, H, dtype=hidden.dtype, device=dev)
    dist.all_to_all_single(back[:n], out_in, send, recv, group=group)
    y = unpermute_combine(back, lay.back_index, ones, valid)
    if capturing:  # no error can be raised from the device: a bad token's row is NaN, never a silent value
        y = y.masked_fill(bad_tok.unsqueeze(1), float("nan"))
    if ev is not None:
        ev["end"].record()
        timings.update(ev)
    return y


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
