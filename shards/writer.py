"""Write one WebDataset shard: `<key>.jpg`, `<key>.json`, `<key>.cls` per sample.

One call writes one tar from its rows of the dataset plan, atomically (a temporary
name, renamed when complete), so a killed run leaves whole shards or none, and a
re-run skips shards already written. This is the unit of parallelism: processes
locally, Prefect tasks on a Dask cluster.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.parquet as pq

from shards.atomic import atomic_path, write_text
from shards.imaging import ShardConfig, make_strip
from shards.msls import read_member
from shards.photo import PhotoError

# Sample metadata stored in `<key>.json` (and in the manifest).
SAMPLE_FIELDS = (
    "city",
    "sequence_key",
    "frame_number",
    "night",
    "view_direction",
    "lat",
    "lon",
    "captured_at",
    "split",
)
MTIME = 1_577_836_800  # fixed member mtime (2020-01-01): reproducible, smaller tars
MAX_MEMBER_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write one shard; small, so it pickles cheaply."""

    staging: str  # the version's staging directory
    shard: str  # relative path, e.g. "train/austin/shard-000000.tar"
    source_root: str
    config: ShardConfig


def result_path(staging: Path, shard: str) -> Path:
    """Where a finished shard records what it wrote (removed when the version is final)."""
    return staging / ".results" / (shard.replace("/", "--") + ".json")


def summary(result: dict) -> dict:
    """The small part of a shard result that is worth passing between tasks."""
    return {
        "shard": result["shard"],
        "samples": len(result["keys"]),
        "failed": len(result["failures"]),
        "bytes": result["bytes"],
    }


def write_shard(job: ShardJob) -> dict:
    """Write `job.shard` from its plan rows; return its `summary`.

    The full result (keys written, failures with reasons) is kept on disk beside the
    staged shard for the manifest. An image that fails to decode here (it passed the
    catalog's structural checks) is reported as a failure and left out, never fatal.
    """
    staging = Path(job.staging)
    done = result_path(staging, job.shard)
    if done.exists() and (staging / job.shard).exists():
        return summary(json.loads(done.read_text()))
    rows = pq.read_table(staging / "plan.parquet", filters=[("shard", "==", job.shard)]).to_pylist()
    keys, failures = [], []
    with (
        atomic_path(staging / job.shard) as tmp,
        open(tmp, "wb") as tar,
    ):
        for row in rows:
            try:
                data = read_member(
                    Path(job.source_root), row["archive"], row["member"], MAX_MEMBER_BYTES
                )
                jpg = make_strip(data, job.config)
            except Exception as exc:  # one bad image must not stop the shard
                failures.append(_failure(row["key"], exc))
                continue
            _add_sample(tar, row, jpg)
            keys.append(row["key"])
        tar.write(b"\0" * 1024)  # end-of-archive marker: two zero blocks
    result = {
        "shard": job.shard,
        "keys": keys,
        "failures": failures,
        "bytes": os.path.getsize(staging / job.shard),
    }
    write_text(done, json.dumps(result))
    return summary(result)


def _failure(key: str, exc: Exception) -> dict:
    """{"key", "reason", "status"}: a PhotoError says why (damaged, too small); any other
    error is unexpected, so its type is kept in the reason."""
    if isinstance(exc, PhotoError):
        return {"key": key, "reason": str(exc), "status": exc.status}
    return {"key": key, "reason": f"{type(exc).__name__}: {exc}", "status": "decode_failed"}


def load_results(staging: Path, shards: tuple[str, ...]) -> list[dict]:
    """Full results of every shard of a staged version; an unwritten shard is an error."""
    missing = [s for s in shards if not result_path(staging, s).exists()]
    if missing:
        raise FileNotFoundError(f"{staging}: shards not written yet: {missing[:3]}")
    return [json.loads(result_path(staging, s).read_text()) for s in shards]


def _add_sample(tar: BinaryIO, row: dict, jpg: bytes) -> None:
    """Append one sample's three members as plain USTAR entries.

    tarfile encodes the headers; we write them ourselves because `TarFile.addfile`
    deep-copies every TarInfo, which cost more than encoding the JPEG.
    """
    meta = {field: row[field] for field in SAMPLE_FIELDS}
    members = {
        "jpg": jpg,
        "json": json.dumps(meta, sort_keys=True).encode(),
        "cls": str(row["city_index"]).encode(),
    }
    for ext, payload in members.items():
        info = tarfile.TarInfo(f"{row['key']}.{ext}")
        info.size, info.mtime, info.mode = len(payload), MTIME, 0o444
        info.uname = info.gname = "msls"
        tar.write(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        tar.write(payload + b"\0" * (-len(payload) % tarfile.BLOCKSIZE))
