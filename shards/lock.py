"""One writer per data root: the prepare lock.

A prepare, a scheduled re-shard and a prune all write under `datasets/` and `catalog/`
and remove leftovers there; two at once could prune each other's staging directories
or race on the catalog. They therefore hold `datasets/.prepare.lock` for their whole
run. It is an OS file lock (flock), so it is released when its process dies, kill -9
included: a crashed run never leaves the data root locked. A second run waits for the
first (logging that it does) up to its timeout, then stops with one line naming the
lock. Training takes no lock; it holds a lease on its version (shards/retention.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from shards.layout import DataLayout

log = logging.getLogger("msls.lock")

LOCK_NAME = ".prepare.lock"
DEFAULT_LOCK_TIMEOUT = 6 * 3600.0  # a full MSLS prepare on a small machine takes hours


class LockBusyError(RuntimeError):
    """Another prepare or re-shard held the data root for longer than we would wait."""


def lock_path(layout: DataLayout) -> Path:
    return layout.datasets / LOCK_NAME


@contextlib.contextmanager
def prepare_lock(layout: DataLayout, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold the data root's prepare lock for the block, waiting up to `timeout` seconds.

    Re-entrant within a process (a re-shard runs prepare as a subflow, maybe on another
    thread), so nested holders share one lock instead of deadlocking on themselves.
    """
    if timeout < 0:
        raise ValueError(f"lock timeout must be >= 0 seconds, got {timeout!r}")
    path = lock_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=False, is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout > 0:
            log.info("%s: another prepare or re-shard is running; waiting %.0fs", path, timeout)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LockBusyError(
                f"{path}: another prepare or re-shard still runs on this data root after "
                f"{timeout:.0f}s; let it finish and run again (or raise the lock timeout)"
            ) from None
    try:
        yield path
    finally:
        lock.release()
