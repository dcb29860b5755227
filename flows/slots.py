"""One training run per accelerator: a Prefect global concurrency limit around training.

Two msls-train runs on one machine would otherwise train on the same GPU at once (both
start at cuda:0), each at half speed or out of memory. The train step holds a slot of
the limit `msls-train-<host>-<device kind>` (limit 1) for as long as it trains;
preparing, rendering and evaluating run freely. A second run waits in the train step
until the first is done, and says so in its log. The limit is made on first use (limit
1) on whatever Prefect API the flow talks to (`msls quickstart` makes it up front);
`prefect gcl update NAME --limit 2` or `prefect gcl disable NAME` changes it. The slot is
a lease: a run killed with its slot held frees it within LEASE_SECONDS.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger

from gan.accelerators import DEVICES, resolve_accelerator

LEASE_SECONDS = 300  # renewed while the run lives; how long a killed run's slot stays taken

log = logging.getLogger("msls.slots")


def limit_name(device: str, host: str | None = None) -> str:
    """`msls-train-<host>-<kind>`: `auto` is resolved to the device it would train on."""
    kind = resolve_accelerator(device).kind if device == "auto" else device
    host = re.sub(r"[^a-z0-9-]+", "-", (host or socket.gethostname()).lower()).strip("-")
    return f"msls-train-{host}-{kind}"


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit `name` unless it exists (then it is left as set)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):  # made meanwhile by another run
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )


def ensure_limits(kinds: tuple[str, ...] = tuple(d for d in DEVICES if d != "auto")) -> list[str]:
    """The limits of this machine for every device kind; returns their names."""
    names = [limit_name(kind) for kind in kinds]
    for name in names:
        ensure_limit(name)
    return names


@contextlib.contextmanager
def accelerator_slot(device: str) -> Iterator[str]:
    """Hold this machine's training slot for `device` (waiting for it); yields the limit name."""
    name = limit_name(device)
    ensure_limit(name)
    logger = _run_logger()
    logger.info("waiting for the training slot %s (one run per accelerator)", name)
    with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True):
        logger.info("got the training slot %s", name)
        yield name


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (its lines show in the Prefect UI), else this module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log
