"""Where things live under the data root (see DESIGN.md, "Data on disk")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ROOT_ENV = "MSLS_DATA"


def default_data_root() -> Path:
    """`$MSLS_DATA` if set, else `./data`."""
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser()


@dataclass(frozen=True)
class DataLayout:
    """The fixed directory layout below one data root."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str] | None = None) -> DataLayout:
        """The layout under `root`; None or "" means `$MSLS_DATA`, else ./data."""
        return cls(Path(root).expanduser() if root not in (None, "") else default_data_root())

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def latest_pointer(self) -> Path:
        return self.datasets / "LATEST"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def dataset(self, version: str) -> Path:
        return self.datasets / version

    def staging(self, version: str) -> Path:
        """Where a version is built; renamed to `dataset(version)` only when complete."""
        return self.datasets / f".staging-{version}"
