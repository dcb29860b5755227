"""Fan work out over all cores with processes (decode and resize are CPU-bound)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from shards.progress import track

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and cgroup-pinned CPUs)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def process_map(
    fn: Callable[[T], R], items: Sequence[T], description: str, workers: int = 0
) -> Iterator[R]:
    """`map(fn, items)` over a pool of `workers` processes (0: all cores), in order.

    Uses the spawn start method: forking a process that runs Prefect's or torch's
    threads can deadlock. With one worker or one item it runs in-process, which
    keeps small jobs fast and tracebacks simple.
    """
    workers = min(workers or cpu_count(), len(items))
    if workers <= 1:
        yield from track(map(fn, items), len(items), description)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from track(pool.map(fn, items), len(items), description)
