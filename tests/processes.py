"""Child processes for the fault tests: run a real pipeline, kill it at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from shards.layout import DataLayout

REPO = Path(__file__).resolve().parent.parent

# argv: source dir, data root, shard size, [lock timeout]
PREPARE = """
import logging, sys
from pathlib import Path
from typing import IO
from shards.catalog import CatalogConfig
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.pipeline import prepare_dataset
from shards.split import SplitConfig
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
prepare_dataset(Path(sys.argv[1]), DataLayout.at(sys.argv[2]), SplitConfig(val_fraction=0.25),
                ShardConfig(shard_size=int(sys.argv[3])), CatalogConfig(workers=1), timeout)
"""


def prepare_args(source: Path, layout: DataLayout, shard_size: int = 2, *extra: str) -> list[str]:
    """A child that runs the whole library pipeline (no Prefect: starts in 0.4 s)."""
    return [sys.executable, "-c", PREPARE, str(source), str(layout.root), str(shard_size), *extra]


def start(args: list[str], stderr: IO | int = subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(args, cwd=REPO, env=env, stderr=stderr, text=True)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...), read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue  # gone meanwhile
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def run_until(args: list[str], kill_now: Callable[[float], bool], timeout: float = 300) -> bool:
    """Run `args`; SIGKILL it once `kill_now(seconds since start)`; True if it was killed.

    A killed run must take its helpers (loader workers, fork server) with it: they are
    given 10 s to go, or the test fails.
    """
    with tempfile.TemporaryFile("w+") as err:
        proc = start(args, err)
        begun = time.monotonic()
        while proc.poll() is None:
            if kill_now(time.monotonic() - begun):
                helpers = descendants(proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                _wait_gone(helpers, 10)
                return True
            if time.monotonic() - begun > timeout:
                proc.kill()
                pytest.fail(f"{args[:3]} ran past {timeout}s")
            time.sleep(0.002)
        err.seek(0)
        assert proc.returncode == 0, err.read()[-2000:]
    return False


def _wait_gone(pids: set[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if _running(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes outlived their killed parent: {sorted(left)}"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has yet to reap it


def never(_: float) -> bool:
    return False


def after_seconds(delay: float) -> Callable[[float], bool]:
    return lambda t: t > delay
