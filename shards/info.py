"""dataset.json: the typed record of one dataset version, read and written only here.

Written last when a version is finalised (shards/dataset.py), read by the loader, verify,
retention and the CLI. The JSON keys are the field names; `to_json` sorts them so the
file is byte-for-byte reproducible apart from `created`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shards.atomic import write_text
from shards.errors import DatasetError
from shards.geometry import strip_size

DATASET_FORMAT = 1
INFO_FILE = "dataset.json"


@dataclass(frozen=True)
class ShardEntry:
    """One tar of the version: its path relative to the version directory."""

    path: str  # e.g. "train/austin/shard-000000.tar"
    samples: int
    bytes: int

    @property
    def split(self) -> str:
        return self.path.split("/")[0]

    @property
    def city(self) -> str:
        return self.path.split("/")[1]


@dataclass(frozen=True)
class DatasetInfo:
    """Everything dataset.json holds about a version (DESIGN.md, "Data on disk")."""

    version: str
    created: str  # ISO 8601, UTC, seconds
    code_version: str
    catalog: dict  # {"hash", "file", "counts"} of the catalog it was built from
    params: dict  # {"split": SplitConfig.as_dict(), "shard": ShardConfig.as_dict()}
    cities: list[str]  # the city index of a sample's .cls is a position in this list
    counts: dict[str, dict[str, int]]  # split -> city -> samples
    totals: dict[str, int]  # split -> samples
    dropped: dict[str, int]  # catalog status or "decode_failed" -> images left out
    decode_failures: list[dict]  # the first 100 {"key", "reason"}
    shards: list[ShardEntry] = field(default_factory=list)
    format: int = DATASET_FORMAT

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DatasetInfo:
        """From a version directory (or its dataset.json); DatasetError if there is none."""
        path = Path(path)
        path = path / INFO_FILE if path.name != INFO_FILE else path
        if not path.is_file():
            raise DatasetError(f"{path}: no dataset version here; `msls prepare` builds one")
        try:
            data = json.loads(path.read_text())
            data["shards"] = [ShardEntry(**s) for s in data.get("shards", [])]
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise DatasetError(
                f"{path}: unreadable dataset.json ({exc}); rebuild it with `msls prepare`"
            ) from exc

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `directory/dataset.json` atomically; returns its path."""
        path = Path(directory) / INFO_FILE
        write_text(path, self.to_json())
        return path

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @property
    def split_params(self) -> dict:
        return self.params["split"]

    @property
    def shard_params(self) -> dict:
        return self.params["shard"]

    @property
    def resolution(self) -> int:
        return self.shard_params["resolution"]

    @property
    def strip_size(self) -> tuple[int, int]:
        """(width, height) of a stored sample."""
        return strip_size(self.resolution, self.shard_params["strip_aspect"])

    def samples(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())
