"""Atomic file writes: write to a temporary sibling, fsync, rename, fsync the directory.

Every file this project writes that someone else reads (zips, catalogs, shards,
manifests, pointers, checkpoints) goes through here, so a killed process leaves either
the old file or the new one under the real name, never a truncated one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from shards.errors import DiskFullError

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    For writers that insist on opening the file themselves (zipfile, pyarrow,
    torch.save). On any exception the temporary file is removed and `path` is untouched;
    a full disk (or a file-size limit) becomes a DiskFullError naming `path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; readers expect the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_directory(target.parent)  # the rename itself survives a power cut
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFullError(
                f"{target}: {os.strerror(exc.errno)} while writing it; nothing was kept. "
                "Free space there or point --data-root (MSLS_DATA) at a larger disk"
            ) from exc
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_torn_writes(directory: Path, recursive: bool = False) -> int:
    """Delete the temporary files of writers that were killed mid-write; return how many.

    kill -9 gives `atomic_path` no chance to clean up, so its `.<name>.*.tmp` files stay
    behind (hidden, never under a real name). Call this only while holding the lock of
    whoever writes in `directory` (the prepare lock), or a live writer loses its file.
    """
    pattern = "**/.*.tmp" if recursive else ".*.tmp"
    torn = [p for p in directory.glob(pattern) if p.is_file()] if directory.is_dir() else []
    for path in torn:
        path.unlink(missing_ok=True)
    return len(torn)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace `path` with UTF-8 `text`."""
    write_bytes(path, text.encode("utf-8"))
