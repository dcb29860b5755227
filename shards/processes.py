"""Other processes: is one alive, and loader workers that end with the one they feed.

PyTorch's worker watchdog compares a worker's parent pid with the one it started
with; under the forkserver start method that parent is the fork server, which a
SIGKILLed trainer leaves alive (each worker holds it open), so the workers of a killed
run would spin on forever. Each worker therefore watches the trainer's pid itself.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable

POLL_SECONDS = 1.0


def exit_with(owner: int) -> Callable[[int], None]:
    """A `worker_init_fn` that ends the worker within a second of `owner` exiting."""
    return functools.partial(_watch, owner)


def _watch(owner: int, _worker_id: int) -> None:
    threading.Thread(target=_poll, args=(owner,), name="msls-owner-watch", daemon=True).start()


def _poll(owner: int) -> None:
    while pid_alive(owner):
        time.sleep(POLL_SECONDS)
    os._exit(0)  # no cleanup to do: the queues' reader is gone


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True
