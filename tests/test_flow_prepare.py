"""The msls-prepare flow and the `msls` CLI, run for real on the synthetic source."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.prepare import prepare
from shards.dataset import load_info
from shards.layout import DataLayout
from shards.verify import verify_dataset

SMALL = {"synthetic_images": 160, "synthetic_cities": 3, "shard_size": 40}


@pytest.mark.slow
def test_flow_builds_a_version_then_is_a_noop(prefect_api, tmp_path):
    first = prepare(data_root=str(tmp_path), **SMALL)
    assert first["built"] is True
    layout = DataLayout.at(tmp_path)
    info = load_info(layout)
    assert info.version == first["version"]
    assert set(info.cities) == {"austin", "bangkok", "budapest"}
    assert verify_dataset(layout.dataset(first["version"])).ok
    again = prepare(data_root=str(tmp_path), **SMALL)
    assert again == {**first, "built": False}


def test_bad_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="resolution must be one of"):
        prepare.fn(data_root=str(tmp_path), resolution=96)
    assert not any(tmp_path.iterdir())


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app, ["--data-root", str(tmp_path), "prepare", "--val-fraction", "1.5"]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: val_fraction must be in [0, 1), got 1.5"]
    assert not any(tmp_path.iterdir())
    result = CliRunner().invoke(app, ["--data-root", str(tmp_path), "verify"])
    assert result.exit_code == 1 and "run `msls prepare` first" in result.output


@pytest.mark.slow
def test_cli_prepare_prints_version_counts_and_location(prefect_api, tmp_path):
    args = [
        "--data-root",
        str(tmp_path),
        "prepare",
        "--synthetic-images",
        "160",
        "--synthetic-cities",
        "3",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    version = load_info(DataLayout.at(tmp_path)).version
    assert f"version: {version}" in result.output
    assert "austin" in result.output and "total" in result.output
    assert str(tmp_path / "datasets" / version) in result.output.replace("\n", "")
    verified = CliRunner().invoke(app, ["--data-root", str(tmp_path), "verify"])
    assert verified.exit_code == 0 and "all good" in verified.output
