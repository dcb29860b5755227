"""The benchmark scripts run end to end on tiny inputs (figures are not judged here)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import prepare as prepare_bench
from benchmarks import train as train_bench


def run(module, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    module.main()


@pytest.mark.slow
def test_prepare_benchmark_writes_its_comparison(tmp_path, monkeypatch):
    out = tmp_path / "prepare.json"
    run(prepare_bench, ["--images", "120", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert result["naive"]["images"] == result["ours"]["images"] > 100
    assert result["per_core_ratio"] > 0 and "goal_met" in result


@pytest.mark.slow
def test_train_benchmark_sets_up_and_runs_one_step(tmp_path, monkeypatch):
    data = tmp_path / "bench"
    run(train_bench, ["setup", "--images", "150", "--out", str(data)], monkeypatch)
    out = tmp_path / "train.json"
    args = ["run", "--data", str(data), "--device", "cpu", "--steps", "1", "--workers", "1"]
    run(train_bench, [*args, "--batch-sizes", "32", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert result["reference"]["images_per_s"] > 0 and result["ours"][0]["batch"] == 32
    assert result["loader_per_core"]["ratio"] > 0
