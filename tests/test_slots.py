"""One training run per accelerator: Prefect global concurrency limits on a real API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from flows.services import REPO
from flows.slots import ensure_limit, limit_name
from gan.accelerators import resolve_accelerator
from tasks.track import tracking_uri
from tests.tiny import TINY_RUN, build_dataset

TINY = TINY_RUN


def test_a_limit_per_machine_and_device_kind():
    assert limit_name("cuda", "GPU-Box.example.org") == "msls-train-gpu-box-example-org-cuda"
    assert limit_name("cpu", "a_b") == "msls-train-a-b-cpu"
    assert limit_name("auto", "h") == f"msls-train-h-{resolve_accelerator('auto').kind}"


def test_ensure_limit_creates_limit_1_once_and_keeps_what_a_user_set(prefect_api):
    name = limit_name("mps", "ensure-test")
    ensure_limit(name)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=2))
    ensure_limit(name)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 2


@pytest.mark.slow
def test_two_msls_train_runs_at_once_train_one_after_the_other(tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    roots = [build_dataset(tmp_path / name) for name in ("a", "b")]  # two stores: no sqlite lock
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "msls",  # as the quickstart's worker has it
        "PYTHONPATH": str(REPO),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    script = "import json, sys; from flows.train import train; print(json.dumps(train(**json.loads(sys.argv[1]))))"  # noqa: E501
    command = [sys.executable, "-c", script]
    runs = [
        subprocess.Popen(
            [*command, json.dumps({"source": "", "data_root": str(root), **TINY})],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for root in roots
    ]  # fmt: skip
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-3000:]
    spans = []
    for root, output in zip(roots, outputs):
        result = json.loads(output.strip().splitlines()[-1])
        info = MlflowClient(tracking_uri(root)).get_run(result["mlflow_run_id"]).info
        spans.append((info.start_time, info.end_time))
    first, second = sorted(spans)
    assert first[1] <= second[0], f"training overlapped: {spans}"
    assert any("waiting for the training slot" in output for output in outputs)
