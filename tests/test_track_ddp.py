"""Data-parallel runs tracked and judged: two gloo CPU ranks through the msls-train flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tasks.progress import TRAIN_KEY
from tasks.registry import MODEL_NAME
from tasks.track import tracking_uri
from tests.tiny import TINY_RUN, build_dataset

TINY = {**TINY_RUN, "workers": 0}


@pytest.mark.slow
def test_two_gloo_ranks_through_the_flow_fill_one_complete_mlflow_run(
    tmp_path, prefect_api, monkeypatch
):
    from flows.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    root = build_dataset(tmp_path)
    result = train(source="", data_root=str(root), nproc=2, **TINY)

    client = MlflowClient(tracking_uri(root))
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("msls-")]
    (run,) = client.search_runs([experiment.experiment_id])  # one run, not one per rank
    assert run.info.run_id == result["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.params["nproc"] == "2" and run.data.params["batch_size"] == "8"
    assert run.data.tags["world_size"] == "2" and run.data.tags["accelerator"] == "cpu"
    assert not [k for k in run.data.tags if k.startswith("resumed.")]  # rank 0 = the launcher's
    for name in ("loss_d", "loss_g", "d_real", "d_fake", "images_per_s", "data_wait"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [2, 4], name
    headline = json.loads((Path(result["report"]).parent / "evaluation.json").read_text())
    judged = {name: value for name, value, _, _ in headline["headline"] if value is not None}
    assert judged and all(run.data.metrics[f"eval.{k}"] == v for k, v in judged.items())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "samples", "options.json", "stats.jsonl"} <= artifacts
    assert {"evaluation.json", "report.html", "interpolation.gif"} <= artifacts
    assert {"real-vs-fake-by-city.png", "nearest-neighbours.png"} <= artifacts
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/step-000002.png", "samples/step-000004.png"} <= samples
    (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert version.run_id == run.info.run_id and version.tags["step"] == "4"
    assert all(f"eval.{name}.verdict" in version.tags for name, *_ in headline["headline"])
    assert "system/cpu_utilization_percentage" in run.data.metrics  # sampled by rank 0

    with get_client(sync_client=True) as prefect:
        key = ArtifactFilterKey(any_=[TRAIN_KEY])
        bars = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=key))
    flow_run = run.data.tags["prefect_flow_run_id"]  # the session's API holds other runs' bars
    (bar,) = [b for b in bars if str(b.flow_run_id) == flow_run]
    assert bar.data == 100.0
