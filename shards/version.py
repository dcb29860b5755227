"""A read-only view of one dataset version directory: its shards, counts and geometry."""

from __future__ import annotations

import os
from pathlib import Path

from shards.errors import DatasetError
from shards.info import DatasetInfo
from shards.split import SPLITS


class DatasetVersion:
    """One version directory as the loaders see it (its dataset.json, typed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.info = DatasetInfo.load(self.path)
        self.version: str = self.info.version
        self.cities: list[str] = list(self.info.cities)
        self.resolution: int = self.info.resolution
        self._samples = {s.path: s.samples for s in self.info.shards}

    @property
    def strip_size(self) -> tuple[int, int]:
        """(width, height) of a stored sample."""
        return self.info.strip_size

    @property
    def sample_bytes(self) -> int:
        """Bytes of one decoded uint8 strip."""
        width, height = self.strip_size
        return 3 * width * height

    def shards(self, split: str) -> list[str]:
        """Relative paths of the split's shards that hold samples, sorted."""
        check_split(split)
        return sorted(p for p, n in self._samples.items() if p.startswith(f"{split}/") and n)

    def shard_samples(self, shard: str) -> int:
        return self._samples[shard]

    def samples(self, split: str) -> int:
        check_split(split)
        return self.info.samples(split)

    def batches_per_rank(self, split: str, batch_size: int, world_size: int = 1) -> int:
        """Batches each of `world_size` ranks makes per epoch: the same for every rank,
        whatever the shard count (ranks split samples, not only shards).

        DatasetError, one line, where a rank would not fill one batch: said before any
        process starts (tasks/train.py) and again by each loader.
        """
        total = self.samples(split)
        batches = total // (world_size * batch_size)
        if batches < 1:
            ranks = f" across {world_size} processes (--nproc)" if world_size > 1 else ""
            raise DatasetError(
                f"{self.path}: {total} {split} samples{ranks} do not fill one batch of "
                f"{batch_size} per process; lower --batch-size"
                + (" or --nproc" if world_size > 1 else "")
                + " or prepare more data"
            )
        return batches

    def url(self, shard: str) -> str:
        return str(self.path / shard)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
