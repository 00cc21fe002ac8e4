"""A dependency-free progress bar on stderr (silent when stderr is not a terminal unless forced)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, enabled: bool | None = None) -> Iterator[T]:
    stream = sys.stderr
    show = stream.isatty() if enabled is None else enabled
    start = time.perf_counter()
    width = 30
    for i, item in enumerate(items):
        if show:
            done = int(width * i / max(total, 1))
            stream.write(f"\r{desc} [{'#' * done}{'.' * (width - done)}] {i}/{total}")
            stream.flush()
        yield item
    if show:
        stream.write(f"\r{desc} [{'#' * width}] {total}/{total} in {time.perf_counter() - start:.1f}s\n")
        stream.flush()
