"""Progress for long work: a bar in a terminal, log lines everywhere else.

Under Prefect (or any non-TTY) a bar is noise in the logs, so we log every ~10%
through the `msls` logger, which the flows ask Prefect to capture.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
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
