"""Dataset retention: leases on versions being read, and pruning old versions.

A training run holds a lease on its dataset version while it reads it: a small JSON
file `data/datasets/.leases/<version>/<holder>.json` with its pid, host and creation
time (outside the version dir, since versions are immutable). `prune_versions` keeps
the newest versions, the one LATEST points to and every leased one, and deletes the
rest by renaming each to `.trash-<version>` first (one atomic step: a reader never sees
a half-deleted version), then removing the trash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from shards.atomic import write_text
from shards.layout import DataLayout
from shards.lock import prepare_lock
from shards.processes import pid_alive

log = logging.getLogger("msls.retention")

LEASES = ".leases"
TRASH_PREFIX = ".trash-"
STAGING_PREFIX = ".staging-"
LEASE_TTL = dt.timedelta(days=7)  # a lease from another host counts this long
STAGING_TTL = dt.timedelta(days=1)  # a staging dir untouched this long is a leftover


def check_keep(keep: int) -> int:
    """`keep` itself, or ValueError (one line) unless it is an int >= 1."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1 (the newest versions kept), got {keep!r}")
    return keep


def _check_name(kind: str, name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{kind} {name!r}: not a plain file name")
    return name


def lease_dir(layout: DataLayout, version: str) -> Path:
    return layout.datasets / LEASES / _check_name("version", version)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.contextmanager
def lease(layout: DataLayout, version: str, holder: str) -> Iterator[Path]:
    """Hold `version` (no pruning) for the duration of the block; yield the lease file."""
    path = lease_dir(layout, version) / f"{_check_name('holder', holder)}.json"
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "created": _now().isoformat(timespec="seconds"),
    }
    write_text(path, json.dumps(record, sort_keys=True))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # others may still hold it
            path.parent.rmdir()


def active_leases(layout: DataLayout, version: str, ttl: dt.timedelta = LEASE_TTL) -> list[dict]:
    """The leases that still hold `version`; stale local ones (dead pid) are removed.

    A lease counts while its pid is alive on this host; one from another host (whose
    pids we cannot check) counts until `ttl` after it was created. Each dict is the
    lease file's content plus "holder".
    """
    directory = lease_dir(layout, version)
    if not directory.is_dir():
        return []
    host, now, active = socket.gethostname(), _now(), []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            created = dt.datetime.fromisoformat(record["created"])
            pid, lease_host = int(record["pid"]), str(record["host"])
        except FileNotFoundError:  # released meanwhile
            continue
        except (ValueError, KeyError, TypeError):  # unreadable: trust it until the TTL passes
            try:
                created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            except FileNotFoundError:
                continue
            if now - created < ttl:
                active.append({"holder": path.stem, "pid": None, "host": None,
                               "created": created.isoformat(timespec="seconds")})  # fmt: skip
            continue
        if lease_host == host:
            if pid_alive(pid):
                active.append({**record, "holder": path.stem})
            else:
                log.info("%s: stale lease (pid %d is gone); removed", path, pid)
                path.unlink(missing_ok=True)
        elif now - created < ttl:
            active.append({**record, "holder": path.stem})
    return active


def latest_version(layout: DataLayout) -> str | None:
    """The version LATEST points to, or None if there is no pointer yet."""
    try:
        return layout.latest_pointer.read_text().strip() or None
    except FileNotFoundError:
        return None


def list_versions(layout: DataLayout) -> list[tuple[str, str]]:
    """(created, version) of every complete version, newest first (ties by name)."""
    found = []
    for info_path in layout.datasets.glob("*/dataset.json"):
        name = info_path.parent.name
        if name.startswith("."):
            continue
        try:
            created = json.loads(info_path.read_text())["created"]
        except (OSError, ValueError, KeyError):
            continue  # being pruned right now, or not ours: never guess
        found.append((str(created), name))
    return sorted(found, reverse=True)


def prune_versions(
    layout: DataLayout,
    keep: int,
    lease_ttl: dt.timedelta = LEASE_TTL,
    staging_ttl: dt.timedelta = STAGING_TTL,
) -> list[str]:
    """Delete versions beyond the newest `keep`; return the pruned version ids.

    Never the version LATEST points to, never one with an active lease. Also removes
    `.trash-*` leftovers and `.staging-*` dirs untouched for `staging_ttl`. Holds the
    prepare lock, so it never runs beside a prepare that is staging a version.
    """
    check_keep(keep)
    if not layout.datasets.is_dir():
        return []
    with prepare_lock(layout):
        latest = latest_version(layout)
        pruned = []
        for _, version in list_versions(layout)[keep:]:
            if version == latest:
                continue
            if active_leases(layout, version, lease_ttl):
                log.info("%s: leased; kept", layout.dataset(version))
                continue
            if _trash(layout, version, lease_ttl):
                pruned.append(version)
        _remove_leftovers(layout, staging_ttl)
    return pruned


def _trash(layout: DataLayout, version: str, lease_ttl: dt.timedelta) -> bool:
    """Rename the version out of sight, then delete it; False if it was kept after all."""
    trash = layout.datasets / f"{TRASH_PREFIX}{version}"
    try:
        os.replace(layout.dataset(version), trash)
    except FileNotFoundError:  # another prune got there first
        return False
    if active_leases(layout, version, lease_ttl):  # leased between the check and the rename
        os.replace(trash, layout.dataset(version))
        log.info("%s: leased while pruning; restored", layout.dataset(version))
        return False
    shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(OSError):
        lease_dir(layout, version).rmdir()
    log.info("%s: pruned", layout.dataset(version))
    return True


def _remove_leftovers(layout: DataLayout, staging_ttl: dt.timedelta) -> None:
    cutoff = (_now() - staging_ttl).timestamp()
    for path in layout.datasets.iterdir():
        if not path.is_dir():
            continue
        if path.name.startswith(TRASH_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(STAGING_PREFIX) and _newest_mtime(path) < cutoff:
            log.info("%s: leftover staging dir untouched for %s; removed", path, staging_ttl)
            shutil.rmtree(path, ignore_errors=True)


def _newest_mtime(path: Path) -> float:
    """The newest modification time in a tree (a build in progress keeps touching it)."""
    newest = path.stat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
    return newest
