"""Any path a filesystem accepts is a data root, and everything stays under it (#14, 8).

The URL-ish characters are the trap: the stores under the root (MLflow's sqlite, the
quickstart's Prefect sqlite) are named by SQLAlchemy URLs, which percent-decode the
path and cut it at `?`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from sqlalchemy.engine import make_url

from shards.layout import DataLayout, sqlite_uri
from tasks.track import MlflowCallback, pin_run, run_id_of, tracking_uri
from tasks.train import train_model
from tests.tiny import build_dataset, tiny_job

ODD_NAMES = ["a%20b", "x?1", "h#1", "q&r=s;t", "sp ace", "plus+", "at@host:1", "ünï", "%", "a/b?"]


@pytest.mark.parametrize("name", ODD_NAMES)
@pytest.mark.parametrize("driver", ["sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"])
def test_the_store_url_names_exactly_the_file_under_the_root(tmp_path, name, driver):
    db = tmp_path / name / "mlflow.db"
    assert make_url(sqlite_uri(db, driver)).database == str(db)


def test_the_layout_owns_the_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = DataLayout.at(tmp_path / "x?1")
    assert layout.mlflow_db == layout.root / "mlflow.db"
    assert layout.mlflow_artifacts == layout.root / "mlartifacts"
    assert tracking_uri(layout.root) == layout.mlflow_uri
    assert make_url(layout.mlflow_uri).database == str(layout.mlflow_db.resolve())


@pytest.mark.slow
def test_tracked_runs_under_url_like_roots_keep_to_their_own_store(tmp_path, monkeypatch):
    """Two roots that used to share (or fail to open) one store: a tracked run in each."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = {}
    for parent in ("run%20a", "run?b"):
        root = build_dataset(tmp_path / parent)
        job, run_dir = pin_run(tiny_job(root, run="r", steps=2))
        train_model(job, [MlflowCallback(job, run_dir)])
        runs[root] = run_id_of(run_dir)
    for root, run_id in runs.items():
        assert (root / "mlflow.db").is_file()
        run = MlflowClient(tracking_uri(root)).get_run(run_id)
        assert run.info.status == "FINISHED"
        assert Path(root / "mlartifacts").is_dir() and any((root / "mlartifacts").rglob("*.pt"))
    # nothing outside the two roots: no stray 'run' database beside 'run?b'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run%20a", "run?b"]
    assert {p.name for p in (tmp_path / "run?b").iterdir()} == {"data", "src"}
