"""`msls verify`: every sample decodes, the manifest matches the tars, counts match."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from shards.info import DatasetInfo
from shards.parallel import parallel_map

SAMPLE_EXTENSIONS = {"jpg", "json", "cls"}


@dataclass
class VerifyReport:
    """What `verify_dataset` found; `ok` is True when `problems` is empty."""

    version: str
    samples: int = 0
    shards: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(dataset_dir: Path, workers: int = 0) -> VerifyReport:
    """Check a dataset version directory end to end (decodes every image)."""
    info = DatasetInfo.load(dataset_dir)
    report = VerifyReport(info.version)
    manifest = pq.read_table(
        dataset_dir / "manifest.parquet", columns=["key", "shard", "split", "city"]
    )
    expected: dict[str, set[str]] = {}
    for key, shard in zip(manifest.column("key").to_pylist(), manifest.column("shard").to_pylist()):
        expected.setdefault(shard, set()).add(key)
    jobs = [(str(dataset_dir / s.path), info.strip_size) for s in info.shards]
    for shard_info, (keys, problems) in zip(
        info.shards, parallel_map(_check_shard, jobs, "verifying shards", workers)
    ):
        report.shards += 1
        report.samples += len(keys)
        report.problems += problems
        if keys != expected.get(shard_info.path, set()):
            report.problems.append(f"{shard_info.path}: keys differ from manifest.parquet")
    report.problems += _count_problems(info, manifest)
    return report


def _count_problems(info: DatasetInfo, manifest) -> list[str]:
    counted = Counter(
        zip(manifest.column("split").to_pylist(), manifest.column("city").to_pylist())
    )
    declared = {
        (split, city): n for split, cities in info.counts.items() for city, n in cities.items()
    }
    if counted != Counter(declared):
        return ["manifest.parquet counts per split and city differ from dataset.json"]
    return []


def _check_shard(job: tuple[str, tuple[int, int]]) -> tuple[set[str], list[str]]:
    """Keys found in one tar and the problems with it (runs in a worker process)."""
    path, size = job
    try:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:
        return set(), [f"{path}: unreadable shard ({exc}); rebuild it with `msls prepare`"]
    samples: dict[str, set[str]] = {}
    for name in members:
        key, _, ext = name.partition(".")
        samples.setdefault(key, set()).add(ext)
    problems = [
        f"{path}: {key} has {sorted(exts)}"
        for key, exts in samples.items()
        if exts != SAMPLE_EXTENSIONS
    ]
    for key in samples:
        problems += _check_sample(path, key, members, size)
    return set(samples), problems


def _check_sample(
    path: str, key: str, members: dict[str, bytes], size: tuple[int, int]
) -> list[str]:
    try:
        with Image.open(io.BytesIO(members[f"{key}.jpg"])) as image:
            image.load()
            if image.size != size:
                return [f"{path}: {key}.jpg is {image.size}, expected {size}"]
        json.loads(members[f"{key}.json"])
        int(members[f"{key}.cls"])
    except (KeyError, OSError, ValueError) as exc:
        return [f"{path}: {key} does not decode ({exc})"]
    return []
