"""Progress in the Prefect UI: real progress artifacts on a real (temporary) Prefect API."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tasks.progress import PREPARE_KEY, TRAIN_KEY, PrefectProgress, TrainingProgress, last_step
from tasks.train import train_tracked
from tests.tiny import build_dataset, tiny_job


def artifacts(key: str) -> list:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return sorted(found, key=lambda a: a.created)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("progress"))


def test_training_in_a_flow_leaves_a_full_progress_bar_on_that_flow_run(
    data_root, prefect_api, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    @flow(name="progress-probe")
    def probe() -> tuple[str, dict]:
        from prefect.runtime import flow_run

        return str(flow_run.id), train_tracked(tiny_job(data_root, run="progress"))

    flow_run_id, result = probe()
    (artifact,) = [a for a in artifacts(TRAIN_KEY) if str(a.flow_run_id) == flow_run_id]
    assert artifact.type == "progress" and artifact.data == 100.0
    assert "progress" in artifact.description and result["dataset"] in artifact.description


def test_a_bar_maps_its_part_onto_a_share_and_throttles(prefect_api):
    @flow(name="progress-share")
    def share() -> str:
        bar = PrefectProgress("msls-progress-test", "a part", start=0.3, end=0.9)
        bar.update(0.5, force=True)
        bar.update(1.0)  # within MIN_INTERVAL of the last: not sent
        return str(bar.id)

    artifact_id = share()
    (artifact,) = [a for a in artifacts("msls-progress-test") if str(a.id) == artifact_id]
    assert artifact.data == 60.0


def test_outside_prefect_progress_does_nothing(data_root):
    bar = PrefectProgress("msls-progress-none", "no run")
    assert bar.id is None
    bar.update(1.0, force=True)  # no API touched


def test_the_budget_fraction_counts_steps_or_minutes_whichever_ends_first(data_root):
    job = tiny_job(data_root, steps=40, dataset="latest")
    from tasks.track import pin_run

    job, _ = pin_run(job)
    progress = TrainingProgress(job)
    assert progress.fraction(10) == pytest.approx(0.25, abs=0.01)
    timed = TrainingProgress(replace(job, steps=0, minutes=10_000.0))
    assert 0 <= timed.fraction(10**6) < 0.01  # minutes only: steps do not count
    by_epochs = TrainingProgress(replace(job, steps=0, epochs=2.0))
    assert by_epochs.steps > 0 and by_epochs.fraction(by_epochs.steps) == 1.0


def test_last_step_skips_a_line_being_written(tmp_path):
    stats = tmp_path / "stats.jsonl"
    assert last_step(stats) is None
    stats.write_text(json.dumps({"step": 20}) + "\n" + json.dumps({"step": 40}) + "\n" + '{"st')
    assert last_step(stats) == 40


@pytest.mark.slow
def test_preparation_fills_its_bar_on_the_prepare_flow_run(prefect_api, tmp_path):
    from flows.prepare import prepare

    small = {"synthetic_images": 160, "synthetic_cities": 3, "shard_size": 40}
    state = prepare(data_root=str(tmp_path), return_state=True, **small)
    assert state.is_completed()
    flow_run_id = str(state.state_details.flow_run_id)
    (bar,) = [a for a in artifacts(PREPARE_KEY) if str(a.flow_run_id) == flow_run_id]
    assert bar.type == "progress" and bar.data == 100.0
    assert "synthetic" in bar.description
