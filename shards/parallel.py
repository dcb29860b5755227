"""Fan work out over all cores with threads.

The heavy parts of our per-image work (JPEG decode and encode, resampling, zlib) run in
C with the GIL released, so threads scale across cores without the start-up cost of
worker processes (spawning two, each importing pyarrow and PIL, cost more CPU than
cataloging a thousand images).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from shards.progress import track

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and cgroup-pinned CPUs)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], description: str, workers: int = 0
) -> Iterator[R]:
    """`map(fn, items)` on `workers` threads (0: one per core), results in order."""
    workers = min(workers or cpu_count(), len(items))
    if workers <= 1:
        yield from track(map(fn, items), len(items), description)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from track(pool.map(fn, items), len(items), description)
