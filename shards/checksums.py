"""The distribution's checksum file, `msls_checksums.md5`: read it, and hold files to it.

Downloads are verified as they arrive (tasks/download.py). A folder the user filled by
hand gets the same scrutiny before anything reads it (`verify_listed`): a truncated or
damaged volume stops prepare with its name. Hashing MSLS (~56 GB) takes minutes, so
each verified file is remembered by (path, size, mtime) and a re-run costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from shards.atomic import write_text
from shards.progress import track_bytes

log = logging.getLogger("msls.checksums")

CHECKSUMS_NAME = "msls_checksums.md5"
CHUNK = 1 << 20  # bytes per read when hashing (files are several GB)
VERIFIED_RECORD = "verified-sources.json"  # in data/raw: files whose md5 matched


class ChecksumError(ValueError):
    """A file that does not match its checksum, or a checksum file that does not parse."""


def read_checksums(path: Path) -> dict[str, str]:
    """Parse md5sum output (`<hex>  <name>` or `<hex> *<name>`) into name -> lowercase hex."""
    sums: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{32})\s+\*?(.+)", line)
        if match is None:
            raise ChecksumError(
                f"{path}:{lineno}: not an md5sum line ('<md5>  <file>'); the checksum "
                "file is damaged: delete it and download it again"
            )
        sums[PurePosixPath(match.group(2).strip()).name] = match.group(1).lower()
    return sums


def md5_of(path: Path, advance: Callable[[int], None] | None = None) -> hashlib._Hash:
    """The md5 of the bytes of `path`, read in chunks; `advance(n)` after each chunk."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if advance:
                advance(len(chunk))
    return digest


class VerifiedFiles:
    """Files whose md5 matched, remembered by resolved path, size and mtime (a JSON file).

    Kept under the data root (the source folder may be read-only). A file rewritten
    since (a new size or mtime) is unknown again. Safe to share between the threads of
    one process (parallel downloads).
    """

    def __init__(self, record: Path) -> None:
        self.record = Path(record)
        self._known = json.loads(self.record.read_text()) if self.record.is_file() else {}
        self._lock = threading.Lock()

    def matched(self, path: Path, md5: str) -> bool:
        return self._known.get(str(Path(path).resolve())) == _stamp(path, md5.lower())

    def add(self, path: Path, md5: str) -> None:
        with self._lock:
            self._known[str(Path(path).resolve())] = _stamp(path, md5.lower())
            write_text(self.record, json.dumps(self._known, indent=1, sort_keys=True))


def verify_listed(folder: Path, record: Path) -> list[Path]:
    """Check every file `folder/msls_checksums.md5` lists and `folder` holds; return them.

    No checksum file: nothing to check (an extracted tree, a hand-made source). A listed
    file that is absent is left to the catalog (a partial set of volumes is legitimate).
    What matched is remembered in `record` (`VerifiedFiles`). Raises ChecksumError
    naming the first file that does not match, before anything reads it.
    """
    sums_path = Path(folder) / CHECKSUMS_NAME
    if not sums_path.is_file():
        return []
    sums = read_checksums(sums_path)
    verified = VerifiedFiles(record)
    listed = [Path(folder) / name for name in sums if (Path(folder) / name).is_file()]
    todo = [p for p in listed if not verified.matched(p, sums[p.name])]
    if todo:
        with track_bytes(sum(p.stat().st_size for p in todo), "verifying checksums") as advance:
            for path in todo:
                digest = md5_of(path, advance).hexdigest()
                if digest != sums[path.name]:
                    raise ChecksumError(
                        f"{path}: md5 {digest} does not match {sums[path.name]} in {sums_path}; "
                        "the file is damaged or incomplete: download it again"
                    )
                verified.add(path, digest)
        log.info("%s: %d files match %s", folder, len(todo), sums_path.name)
    return listed


def _stamp(path: Path, md5: str) -> list:
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns, md5]
