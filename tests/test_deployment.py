"""msls-train on a real Prefect server and process worker on loopback, from prefect.yaml."""

from __future__ import annotations

import socket

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.schemas.schedules import CronSchedule

from flows.services import REPO, Services
from shards.layout import DataLayout

TINY = {
    "synthetic_images": 120,
    "synthetic_cities": 3,
    "steps": 4,
    "minutes": 0.0,
    "ngf": 8,
    "ndf": 8,
    "batch_size": 8,
    "sample_every": 2,
    "eval_samples": 32,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prefect_yaml_deploys_the_three_flows_with_a_weekly_utc_cron():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"msls-train", "msls-prepare", "msls-reshard"}
    (schedule,) = deployments["msls-reshard"]["schedules"]
    parsed = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert parsed.timezone == "UTC" and parsed.cron == "0 3 * * 1"
    for deployment in deployments.values():
        assert deployment["work_pool"]["name"] == "msls-local"
        module, function = deployment["entrypoint"].split(":")
        assert (REPO / module).exists() and f"def {function}(" in (REPO / module).read_text()


@pytest.mark.slow
def test_msls_train_deployment_runs_to_completion(tmp_path):
    services = Services(DataLayout.at(tmp_path / "data"), free_port(), free_port())
    try:
        services.start_prefect()
        services.deploy()
        services.start_worker()
        services.run_training({"data_root": str(tmp_path / "data"), **TINY}, timeout=900)
        query = {"artifacts": {"key": {"any_": ["msls-train-summary"]}}}
        found = httpx.post(f"{services.prefect_url}/api/artifacts/filter", json=query).json()
        assert found and "_valwin |" in found[0]["data"]  # the SWD row of the headline
    finally:
        stopped = services.stop()
    assert set(stopped) >= {"prefect-server", "prefect-worker"}
    client = MlflowClient(DataLayout.at(tmp_path / "data").mlflow_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("msls-")]
    assert experiment.artifact_location.startswith((tmp_path / "data").as_uri())
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and "loss_d" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation.json", "report.html", "interpolation.gif", "samples"} <= artifacts
