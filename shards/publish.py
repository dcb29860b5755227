"""Publish a finished dataset version to any fsspec URL (s3://, gs://, file://, ...).

Shards are built on a local (or shared) disk, where a temp name + rename makes every
file atomic and a killed run resumable; object stores have no rename. A finished
version is then uploaded file by file with `dataset.json` last and the `LATEST` pointer
after it, the same rule as on disk: a reader that finds `dataset.json` finds every
shard, and `LATEST` never names a version that is still uploading.
"""

from __future__ import annotations

import logging
from pathlib import Path

import fsspec

log = logging.getLogger("msls.publish")

LAST = "dataset.json"


def check_url(url: str) -> str:
    """`url` itself if fsspec knows its protocol (its package may still be missing)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol not in fsspec.available_protocols():
        raise ValueError(f"publish URL {url!r}: unknown fsspec protocol {protocol!r}")
    return url


def publish_version(version_dir: Path, url: str) -> str:
    """Upload `version_dir` to `<url>/<version>/` and point `<url>/LATEST` at it.

    A version already published (its dataset.json is there) is not uploaded again.
    Returns the version's URL.
    """
    fs, root = fsspec.core.url_to_fs(check_url(url))
    root = root.rstrip("/")
    target = f"{root}/{version_dir.name}"
    if fs.exists(f"{target}/{LAST}"):
        log.info("%s: already published", target)
    else:
        files = sorted(p for p in version_dir.rglob("*") if p.is_file() and p.name != LAST)
        for path in [*files, version_dir / LAST]:
            remote = f"{target}/{path.relative_to(version_dir).as_posix()}"
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), remote)
        log.info("%s: published %d files", target, len(files) + 1)
    fs.pipe_file(f"{root}/LATEST", f"{version_dir.name}\n".encode())
    return fs.unstrip_protocol(target)
