"""Where things live under the data root (see DESIGN.md, "Data on disk")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

DATA_ROOT_ENV = "MSLS_DATA"


def default_data_root() -> Path:
    """`$MSLS_DATA` if set, else `./data`."""
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser()


def sqlite_uri(path: str | os.PathLike[str], driver: str = "sqlite") -> str:
    """`<driver>:///<absolute path>`, percent-escaped.

    SQLAlchemy (under MLflow and Prefect) reads the database path of a URL
    percent-decoded and cut at `?`, its query string: unescaped, a data root 'runs/a%20b'
    named a missing 'runs/a b', and 'runs/x?1' a database 'runs/x' outside the root,
    shared by every root that starts so.
    """
    return f"{driver}:///{quote(str(Path(path).resolve()))}"


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

    @property
    def mlflow_db(self) -> Path:
        """The default MLflow store's database (tasks/track.py turns it into a URI)."""
        return self.root / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        """The default MLflow store as a tracking URI.

        `sqlite+pysqlite`, the driver plain `sqlite` means: MLflow 3.17 makes the parent
        directory of a `sqlite:///` path itself, without decoding it, so 'runs/a%20b'
        left an empty 'runs/a%2520b' beside the root.
        """
        return sqlite_uri(self.mlflow_db, "sqlite+pysqlite")

    @property
    def mlflow_artifacts(self) -> Path:
        """The default MLflow store's artifacts, one folder per experiment."""
        return self.root / "mlartifacts"

    def dataset(self, version: str) -> Path:
        return self.datasets / version

    def staging(self, version: str) -> Path:
        """Where a version is built; renamed to `dataset(version)` only when complete."""
        return self.datasets / f".staging-{version}"
