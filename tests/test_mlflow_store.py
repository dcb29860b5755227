"""The MLflow store under concurrency: made once, and a server that dies is not waited out.

Found as a CI failure: `msls ui` and the quickstart's MLflow server, started together on
a fresh data root, both ran MLflow's table migration; one died and the store could be
left half-migrated, so that every later open failed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.services import ServiceError, Services
from shards.layout import DataLayout, sqlite_uri
from tasks.mlflow_store import StoreError, ready_store
from tests.processes import REPO
from tests.test_deployment import free_port

OPENERS = 4
# imports MLflow, says so, waits for the others, then opens the store as a run would
OPEN = """
import sys, time
from pathlib import Path
from mlflow import MlflowClient
from tasks.mlflow_store import ready_store
uri, here, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
here.touch()
while not go.exists():
    time.sleep(0.01)
print(len(MlflowClient(ready_store(uri)).search_experiments()))
"""


def _until_ready(openers: list[subprocess.Popen], paths: list[Path]) -> None:
    """Until every opener has said it is ready; one that exits before fails the test."""
    while not all(path.exists() for path in paths):
        exited = [opener for opener in openers if opener.poll() is not None]
        assert not exited, exited[0].communicate()[1].strip().splitlines()[-1:]
        time.sleep(0.05)


def test_processes_opening_a_fresh_store_together_all_get_one_store(tmp_path):
    uri = sqlite_uri(tmp_path / "root" / "mlflow.db", "sqlite+pysqlite")
    ready = [tmp_path / f"ready-{i}" for i in range(OPENERS)]
    go = tmp_path / "go"
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, uri, str(path), str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in ready
    ]
    _until_ready(openers, ready)
    go.touch()
    results = [(*opener.communicate(), opener.returncode) for opener in openers]
    assert [(code, out.strip()) for out, _, code in results] == [(0, "1")] * OPENERS, [
        err.strip().splitlines()[-1:] for _, err, _ in results
    ]
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]


@pytest.mark.parametrize(
    "uri",
    ["databricks", "http://127.0.0.1:5000", "file:///tmp/mlruns", "mlruns", "sqlite:///:memory:"],
)
def test_stores_not_in_a_sqlite_file_pass_through_untouched(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ready_store(uri) == uri
    assert list(tmp_path.iterdir()) == []


def test_a_store_mlflow_cannot_open_is_one_line_naming_it(tmp_path, monkeypatch):
    layout = DataLayout.at(tmp_path)
    layout.root.mkdir(parents=True, exist_ok=True)
    (layout.root / "mlflow.db").write_bytes(b"not a database\n" * 100)
    with pytest.raises(StoreError, match=r"mlflow\.db: MLflow cannot open this store"):
        ready_store(layout.mlflow_uri)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["--data-root", str(tmp_path), "ui", "--port", "0"])
    assert result.exit_code == 1, result.output
    assert "mlflow.db: MLflow cannot open this store" in result.output
    assert (layout.root / "mlflow.db").read_bytes() == b"not a database\n" * 100
    with pytest.raises(ServiceError, match="cannot open this store"):
        Services(layout, mlflow_port=free_port()).start_mlflow()


@pytest.mark.slow
def test_a_server_that_exits_is_reported_not_waited_out(tmp_path):
    layout = DataLayout.at(tmp_path / "data")
    with socket.socket() as taken:  # listens but never answers: MLflow cannot bind it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        services = Services(layout, mlflow_port=taken.getsockname()[1])
        with pytest.raises(ServiceError, match=r"its server exited \(\d+\); see .*mlflow-server"):
            services.start_mlflow()
    services.stop()
