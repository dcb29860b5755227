"""The drifts between copies of the options that users hit, each held by a test.

- a training-seed sweep must not build a new dataset version;
- the flow's `device` reaches every step that computes (train, render, evaluate);
- `$MSLS_DATA` is honoured by every entry point;
- options.json holds exactly the configuration that ran, and MLflow the same values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import tasks.evaluate
import tasks.render
from flows.cli import app
from flows.prepare import prepare
from flows.train import train
from shards.layout import DataLayout
from shards.options import flat
from tasks.jobs import TrainJob
from tasks.track import tracking_uri
from tasks.train import train_model
from tests.tiny import TINY_RUN, tiny_job

TINY_SOURCE = {"synthetic_images": 120, "synthetic_cities": 3}
TINY_FLOW = {**TINY_SOURCE, **TINY_RUN}


@pytest.fixture
def asked_devices(monkeypatch) -> list[tuple[str, str]]:
    """(step, device name) for each accelerator that render and evaluate ask for."""
    asked: list[tuple[str, str]] = []
    for module in (tasks.render, tasks.evaluate):
        real = module.resolve_accelerator

        def spy(name="auto", *args, _real=real, _step=module.__name__):
            asked.append((_step, name))
            return _real(name, *args)

        monkeypatch.setattr(module, "resolve_accelerator", spy)
    return asked


@pytest.mark.slow
def test_seed_sweep_device_and_recorded_options(prefect_api, tmp_path, monkeypatch, asked_devices):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "data"
    first = train(data_root=str(root), preset="cpu", source="synthetic", **TINY_FLOW)
    second = train(data_root=str(root), preset="cpu", source="synthetic", seed=1, **TINY_FLOW)

    # A training-seed sweep trains on the same dataset version, judged on the same val split.
    assert second["dataset"] == first["dataset"]
    versions = [p for p in DataLayout.at(root).datasets.iterdir() if (p / "dataset.json").exists()]
    assert len(versions) == 1
    assert second["run"] != first["run"]

    # The flow's device reached render and evaluate, not only training.
    assert {step for step, _ in asked_devices} == {"tasks.render", "tasks.evaluate"}
    assert {device for _, device in asked_devices} == {"cpu"}

    # options.json is exactly the configuration that ran; MLflow has the same values.
    options = json.loads((Path(first["checkpoint"]).parent / "options.json").read_text())
    ran = TrainJob.from_dict(options["job"])
    assert ran.train.batch_size == 8 and ran.train.seed == 0 and ran.model.ngf == 8
    assert "batch_size" not in options["job"]["loader"] and "seed" not in options["job"]["loader"]
    assert (ran.minutes, ran.steps) == (0.0, 4)  # the explicit budget replaced the preset's
    params = MlflowClient(tracking_uri(root)).get_run(first["mlflow_run_id"]).data.params
    assert {k: params[k] for k in flat(ran)} == {k: str(v) for k, v in flat(ran).items()}


@pytest.mark.slow
def test_msls_data_is_honoured_by_every_entry_point(prefect_api, tmp_path, monkeypatch):
    root = tmp_path / "from-env"
    monkeypatch.setenv("MSLS_DATA", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data would be tmp_path/data: it must stay absent

    built = prepare(**TINY_SOURCE)  # the flow, no data_root
    assert Path(built["path"]).is_relative_to(root)
    verified = CliRunner().invoke(app, ["verify"])  # the CLI, no --data-root
    assert verified.exit_code == 0 and built["version"] in verified.output
    job = tiny_job("")  # data_root "": $MSLS_DATA
    trained = train_model(job)  # the task's plain function, data_root ""
    assert Path(trained["checkpoint"]).is_relative_to(root)
    assert tracking_uri() == tracking_uri(root)  # the store of the env data root
    assert not (tmp_path / "data").exists()
