"""One benchmark harness for every moebal benchmark: timers, machine ceilings, tables.

GPU timing: warm-up, then CUDA events around each repetition, optional L2 flush between
repetitions (a 2x-L2-sized buffer is overwritten), median reported. CPU timing: perf_counter,
median. Tables print as aligned text and can be written as Markdown or CSV.
"""
from __future__ import annotations

import csv
import io
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass
class Timing:
    median_us: float
    min_us: float
    p90_us: float
    reps: int


def _summary(samples_us: Sequence[float]) -> Timing:
    s = sorted(samples_us)
    return Timing(statistics.median(s), s[0], s[min(len(s) - 1, int(0.9 * len(s)))], len(s))


def time_cpu(fn: Callable[[], Any], reps: int = 20, warmup: int = 2) -> Timing:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return _summary(out)


_l2_buffer = None


def time_cuda(fn: Callable[[], Any], reps: int = 20, warmup: int = 3, flush_l2: bool = False) -> Timing:
    """Median time of fn() on the current CUDA stream, in microseconds."""
    import torch

    global _l2_buffer
    if flush_l2 and _l2_buffer is None:
        l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
        _l2_buffer = torch.empty(max(2 * l2, 1 << 20), dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if flush_l2:
            _l2_buffer.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)])


def measure_hbm_copy_TBps(num_bytes: int = 2 << 30) -> float:
    """Device-to-device copy rate, counting bytes read plus written (TB/s)."""
    import torch

    a = torch.empty(num_bytes // 2, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = time_cuda(lambda: b.copy_(a), reps=10)
    return 2 * a.numel() / (t.median_us * 1e-6) / 1e12


def measure_bf16_matmul_TFLOPs(n: int = 8192) -> float:
    """Dense bf16 matmul rate of an n x n x n product on random data (TFLOP/s)."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    t = time_cuda(lambda: a @ b, reps=10)
    return 2 * n**3 / (t.median_us * 1e-6) / 1e12


def device_description() -> str:
    """'NVIDIA H100 80GB HBM3, torch 2.11.0+cu130' or the CPU model for CPU runs."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    except ImportError:
        pass
    import platform

    return f"CPU {platform.processor() or platform.machine()}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                 markdown: bool = False, floatfmt: str = "{:.3g}") -> str:
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        return floatfmt.format(v) if isinstance(v, float) else str(v)

    body = [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths)), "-" * (sum(widths) + 2 * (len(cols) - 1))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    with open(path, "w") as f:
        f.write(buf.getvalue())
