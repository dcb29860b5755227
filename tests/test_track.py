"""MLflow tracking of real training runs, in a real sqlite store under tmp_path."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient

from gan.checkpoint import load_checkpoint
from gan.sampling import generator_from_state
from shards.layout import DataLayout
from shards.provenance import code_version
from tasks.registry import MODEL_NAME
from tasks.track import (
    MlflowCallback,
    log_artifacts,
    params_of,
    pin_run,
    run_id_of,
    tracking_uri,
)
from tasks.train import TrainJob, train_model
from tests.tiny import build_dataset, tiny_job

METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "images_per_s", "data_wait")


def tracked(job: TrainJob) -> tuple[dict, str]:
    job, run_dir = pin_run(job)
    result = train_model(job, [MlflowCallback(job, run_dir)])
    return result, run_id_of(run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tracked run of 4 steps, then the same run resumed to 6 steps."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)  # the data root's store, not the user's
        env.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # samples in a short run
        root = build_dataset(tmp_path_factory.mktemp("track"))
        first, run_id = tracked(tiny_job(root, run="tracked"))
        first_history = MlflowClient(tracking_uri(root)).get_metric_history(run_id, "loss_d")
        resumed, resumed_id = tracked(tiny_job(root, steps=6, resume="tracked"))
        yield SimpleNamespace(
            root=root, first=first, run_id=run_id, first_history=first_history,
            resumed=resumed, resumed_id=resumed_id,
        )  # fmt: skip


@pytest.fixture
def client(runs):
    return MlflowClient(tracking_uri(runs.root))


def test_tracking_uri_is_the_data_roots_sqlite_store_unless_the_env_says(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path / "d") == DataLayout.at(tmp_path / "d").mlflow_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path / "d") == "http://127.0.0.1:5000"


def test_one_run_with_every_param_tag_and_metric(runs, client):
    root, first, run_id = runs.root, runs.first, runs.run_id
    assert (root / "mlflow.db").is_file()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracked"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == f"msls-{first['dataset']}"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location.startswith((root.resolve() / "mlartifacts").as_uri())
    named = client.search_runs([run.info.experiment_id], "attributes.run_name = 'tracked'")
    assert len(named) == 1

    job = tiny_job(root, run="tracked", dataset=first["dataset"])
    expected = params_of(replace(job, model=replace(job.model, resolution=64)))
    params = run.data.params
    assert set(expected) <= set(params)
    assert params["batch_size"] == "8" and params["ngf"] == "8" and params["resolution"] == "64"
    assert params["steps"] == "4"  # the first session's value stays...
    assert run.data.tags["resumed.steps"] == "6"  # ...and the resumed one is a tag

    tags = run.data.tags
    assert tags["dataset_version"] == first["dataset"]
    assert tags["code_version"] == code_version()
    assert tags["accelerator"] == "cpu" and tags["world_size"] == "1"
    assert "prefect_flow_run_id" not in tags  # not inside a flow


def test_metric_histories_have_the_logging_steps(runs, client):
    run_id = runs.run_id
    for name in METRICS:
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == [2, 4, 6], name


def test_checkpoint_and_registered_generator(runs, client, tmp_path):
    run_id, resumed = runs.run_id, runs.resumed
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint", "options.json", "stats.jsonl"} <= names
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == [
        "checkpoint/checkpoint.pt"
    ]
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert len(versions) == 2  # one per training session (steps 4 and 6)
    latest = max(versions, key=lambda v: int(v.version))
    assert latest.run_id == run_id
    assert latest.tags["dataset_version"] == resumed["dataset"]
    assert latest.tags["step"] == "6"
    outputs = client.get_run(run_id).outputs.model_outputs  # MLflow 3 LoggedModels, by step
    models = {o.step: client.get_logged_model(o.model_id) for o in outputs}
    assert sorted(models) == [4, 6]
    assert all(m.source_run_id == run_id and m.status == "READY" for m in models.values())
    assert latest.source == models[6].artifact_location
    local = client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(tmp_path))
    weights = mlflow.artifacts.download_artifacts(
        f"{latest.source}/artifacts/generator.pt", dst_path=str(tmp_path / "model")
    )
    G, config = generator_from_state(load_checkpoint(weights))
    assert config.nz == 16
    final = load_checkpoint(local)
    assert all((G.state_dict()[k] == v).all() for k, v in final["ema"].items())


def test_system_metrics_are_sampled_while_training(runs, client):
    metrics = client.get_run(runs.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0
    history = client.get_metric_history(runs.run_id, "system/cpu_utilization_percentage")
    steps = [m.step for m in history]
    assert len(set(steps)) == len(steps)  # the resumed session continued the step count


def test_resume_continues_the_same_mlflow_run(runs, client):
    assert runs.resumed["run"] == runs.first["run"] == "tracked"
    assert runs.resumed_id == runs.run_id
    assert sorted(m.step for m in runs.first_history) == [2, 4]
    assert sorted(m.step for m in client.get_metric_history(runs.run_id, "loss_d")) == [2, 4, 6]


def test_later_artifacts_attach_to_a_finished_run(runs, client, tmp_path):
    root, run_id = runs.root, runs.run_id
    report = tmp_path / "evaluation.json"
    report.write_text("{}")
    log_artifacts(run_id, [report], "evaluation", data_root=root)
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == [
        "evaluation/evaluation.json"
    ]
    with pytest.raises(FileNotFoundError, match="nothing to log"):
        log_artifacts(run_id, [tmp_path / "missing.png"], data_root=root)


def test_a_run_whose_training_raised_is_marked_failed(runs, client):
    job, run_dir = pin_run(tiny_job(runs.root, run="crashed"))
    with pytest.raises(RuntimeError, match="boom"), MlflowCallback(job, run_dir):
        raise RuntimeError("boom")
    assert client.get_run(run_id_of(run_dir)).info.status == "FAILED"


def test_msls_ui_serves_the_data_roots_store_on_localhost(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    result = CliRunner().invoke(app, ["--data-root", str(tmp_path), "ui", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:0" in result.output
    ((argv, env),) = calls
    assert argv[argv.index("--backend-store-uri") + 1] == tracking_uri(tmp_path)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--workers") + 1] == "1"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(app, ["--data-root", str(tmp_path), "ui", "--port", port])
    assert result.exit_code == 1 and "in use" in result.output
