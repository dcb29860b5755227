"""Progress for long work: a bar in a terminal, log lines everywhere else.

Under Prefect (or any non-TTY) a bar is noise in the logs, so we log every ~10%
through the `msls` logger, which the flows ask Prefect to capture.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("msls")


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield `items`, reporting progress towards `total` as a bar or as log lines."""
    if sys.stderr.isatty():
        from rich.progress import track as rich_track

        yield from rich_track(items, total=total, description=description, transient=True)
        return
    step = max(1, total // 10)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or done == total:
            log.info("%s: %d/%d", description, done, total)


@contextlib.contextmanager
def track_bytes(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A callable `advance(n_bytes)` reporting progress towards `total` bytes."""
    if sys.stderr.isatty():
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
        return
    done, tenth = 0, 1

    def advance(n: int) -> None:
        nonlocal done, tenth
        done += n
        if total and done * 10 >= tenth * total:
            tenth = done * 10 // total + 1
            log.info("%s: %d%% of %.1f MB", description, 100 * done // total, total / 1e6)

    yield advance
