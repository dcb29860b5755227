"""The registered `msls-dcgan` MLflow model: loaded, served, judged and promoted for real."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from gan.sampling import generate, load_generator
from tasks.registry import MODEL_NAME, promote, record_evaluation, requirements, run_version
from tasks.served_model import MAX_IMAGES, MAX_TOTAL
from tasks.track import MlflowCallback, pin_run, run_id_of, tracking_uri
from tasks.train import train_model
from tests.tiny import TINY_MODEL, build_dataset, tiny_job


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tracked 4-step run; MLflow's global URIs point at its store while tests run."""
    with pytest.MonkeyPatch.context() as env:
        root = build_dataset(tmp_path_factory.mktemp("served"))
        env.setenv("MLFLOW_TRACKING_URI", tracking_uri(root))
        job, run_dir = pin_run(tiny_job(root, run="served"))
        with MlflowCallback(job, run_dir) as tracker:
            result = train_model(job, [tracker])
        client = MlflowClient(tracking_uri(root))
        (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
        yield SimpleNamespace(
            root=root, result=result, run_id=run_id_of(run_dir), client=client, version=version
        )


def decode(png: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(png)))
    assert image.mode == "RGB"
    return np.asarray(image)


def test_the_registered_version_loads_offline_and_draws_the_checkpoints_images(
    trained, monkeypatch
):
    def no_network(*args, **kwargs):
        raise AssertionError(f"network use while loading the model: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{trained.version.version}")
    out = model.predict(pd.DataFrame({"n": [3, 2], "seed": [7, 8]}))
    assert list(out.columns) == ["request", "index", "png"]
    assert out[["request", "index"]].values.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]
    G, _, _ = load_generator(trained.result["checkpoint"])
    expected = generate(G, 3, seed=7).permute(0, 2, 3, 1).numpy()
    for row, want in zip(out.itertuples(), expected):
        assert decode(row.png).shape == (64, 64, 3)
        np.testing.assert_array_equal(decode(row.png), want)
    truncated = model.predict(pd.DataFrame({"n": [1], "seed": [7], "truncation": [0.5]}))
    want = generate(G, 1, seed=7, truncation=0.5)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(decode(truncated.png[0]), want)


def test_the_model_is_code_and_weights_with_a_signature_and_example_no_pickle(trained, tmp_path):
    path = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{MODEL_NAME}/{trained.version.version}", dst_path=str(tmp_path)
        )
    )
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert "served_model.py" in files and "artifacts/generator.pt" in files
    assert {"code/gan/models.py", "code/shards/atomic.py"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pyc"))]
    info = mlflow.models.get_model_info(str(path))
    names = [c["name"] for c in info.signature.inputs.to_dict()]
    assert names == ["n", "seed", "truncation", "city", "night"]
    assert json.loads((path / "input_example.json").read_text())["data"] == [[2, 0]]
    assert (path / "requirements.txt").read_text().split() == requirements()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"n": [0]}, "n must be 1.."),
        ({"n": [MAX_IMAGES + 1]}, "n must be 1.."),
        ({"n": [MAX_IMAGES] * (MAX_TOTAL // MAX_IMAGES + 1)}, "split the request"),
        ({"n": [1], "truncation": [-1.0]}, "truncation must be > 0"),
        ({"seed": [1]}, "missing inputs \\['n'\\]"),
        ({"n": [1], "city": ["paris"]}, "unconditional, so it cannot draw 'paris'"),
        ({"n": [1], "night": [True]}, "unconditional, so it cannot draw night"),
    ],
)
def test_a_bad_request_gets_one_clear_error(trained, frame, message):
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{trained.version.version}")
    with pytest.raises(MlflowException, match=message):
        model.predict(pd.DataFrame(frame))


def test_evaluation_tags_the_version_and_promote_points_an_alias_at_it(trained):
    client, run_id = trained.client, trained.run_id
    evaluation = {
        "step": 4,
        "headline": [
            ["swd_val", 812.5, 20.0, "far from real (40.6x floor)"],
            ["fid_val", None, None, "no Inception weights given"],
        ],
    }
    version = record_evaluation(client, run_id, evaluation)
    assert version.tags["eval.swd_val"] == "812.5"
    assert version.tags["eval.swd_val.verdict"] == "far from real (40.6x floor)"
    assert version.tags["eval.fid_val.verdict"] == "no Inception weights given"
    assert "eval.fid_val" not in version.tags
    assert client.get_run(run_id).data.metrics["eval.swd_val"] == 812.5

    promoted = promote(client, run_id)
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == promoted.version
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    assert len(model.predict(pd.DataFrame({"n": [1]}))) == 1
    with pytest.raises(ValueError, match="reserved"):
        promote(client, run_id, "v3")
    with pytest.raises(ValueError, match="registered no msls-dcgan version"):
        promote(client, "0" * 32)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_images(trained, tmp_path):
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` execs `uvicorn` by name
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    uri = f"models:/{MODEL_NAME}/{trained.version.version}"
    command = [
        f"{bin_dir}/mlflow", "models", "serve", "-m", uri,
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        status, body = post(f"{url}/invocations", {"dataframe_records": [{"n": 2, "seed": 3}]})
        assert status == 200, body
        rows = body["predictions"]
        assert [(r["request"], r["index"]) for r in rows] == [(0, 0), (0, 1)]
        G, _, _ = load_generator(trained.result["checkpoint"])
        want = generate(G, 2, seed=3).permute(0, 2, 3, 1).numpy()
        for row, image in zip(rows, want):
            np.testing.assert_array_equal(decode(row["png"]), image)
        status, body = post(f"{url}/invocations", {"dataframe_records": [{"n": 100_000}]})
        assert status == 400 and "n must be 1.." in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def test_msls_promote_takes_a_run_name_and_says_what_it_did(trained):
    from typer.testing import CliRunner

    from flows.cli import app

    args = ["--data-root", str(trained.root), "promote", "served", "--alias", "staging"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    version = trained.client.get_model_version_by_alias(MODEL_NAME, "staging")
    assert version.run_id == trained.run_id
    assert f"@staging -> version {version.version}" in result.output
    result = CliRunner().invoke(app, ["--data-root", str(trained.root), "promote", "no-such-run"])
    assert result.exit_code == 1
    assert "registered no msls-dcgan version" in result.output


def test_a_conditional_model_draws_the_requested_city(tmp_path, monkeypatch):
    root = build_dataset(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(root))
    model = replace(TINY_MODEL, conditional="city")
    job, run_dir = pin_run(tiny_job(root, run="served-city", model=model))
    with MlflowCallback(job, run_dir) as tracker:
        result = train_model(job, [tracker])
    version = run_version(MlflowClient(tracking_uri(root)), run_id_of(run_dir))
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version.version}")
    out = served.predict(pd.DataFrame({"n": [2, 2], "seed": [1, 1], "city": ["paris", "tokyo"]}))
    G, _, _ = load_generator(result["checkpoint"])
    for request, city in enumerate([1, 2]):
        want = generate(G, 2, seed=1, labels=torch.full((2,), city))
        got = [decode(row.png) for row in out.itertuples() if row.request == request]
        np.testing.assert_array_equal(np.stack(got), want.permute(0, 2, 3, 1).numpy())
    with pytest.raises(MlflowException, match=r"unknown city 'helsinki'; .* austin, paris, tokyo"):
        served.predict(pd.DataFrame({"n": [1], "city": ["helsinki"]}))
    with pytest.raises(MlflowException, match="not conditioned on night"):
        served.predict(pd.DataFrame({"n": [1], "city": ["paris"], "night": [True]}))
