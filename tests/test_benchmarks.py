"""The benchmark scripts run end to end on tiny inputs (figures are not judged here)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import prepare as prepare_bench
from benchmarks import quality as quality_bench
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


@pytest.mark.slow
def test_quality_benchmark_trains_every_arm_for_equal_time_and_scores_it(tmp_path, monkeypatch):
    data = tmp_path / "bench"
    run(
        train_bench,
        ["setup", "--images", "200", "--val-fraction", "0.3", "--out", str(data)],
        monkeypatch,
    )
    out = tmp_path / "quality.json"
    args = ["--data", str(data), "--device", "cpu", "--seconds", "1", "--batch-sizes", "16,32"]
    run(quality_bench, [*args, "--images", "24", "--workers", "1", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    ours, reference = result["arms"][:2], result["arms"][2]
    assert [arm["batch"] for arm in ours] == [16, 32] and reference["arm"] == "reference"
    assert reference["seconds"] >= max(arm["seconds"] for arm in ours)  # never less time
    assert all(arm["steps"] >= 1 and arm["swd"]["mean"] > 0 for arm in result["arms"])
    assert result["val_images"] == 24 and result["floor"]["mean"] > 0
    assert set(result["swd_mean_by_config"]) == {"ours-b16", "ours-b32", "reference"}
    assert isinstance(result["ours_at_least_as_good"], bool)


@pytest.mark.slow
def test_conditional_benchmark_scores_both_arms_and_a_small_city(tmp_path, monkeypatch):
    from benchmarks import conditional as conditional_bench

    data = tmp_path / "bench"
    run(train_bench, ["setup", "--images", "240", "--val-fraction", "0.2", "--out", str(data)],
        monkeypatch)  # fmt: skip
    out, grid = tmp_path / "conditional.json", tmp_path / "grid.png"
    args = ["--data", str(data), "--seeds", "1", "--seconds", "3", "--few", "4"]
    run(conditional_bench, [*args, "--out", str(out), "--grid", str(grid)], monkeypatch)
    result = json.loads(out.read_text())
    assert set(result["arms"]) == {"unconditional", "conditional"}
    assert 0 <= result["arms"]["conditional"]["recognised_mean"] <= 1
    assert 0 < len(result["runs"][0]["swd_by_city"]) <= len(result["cities"])  # tiny val: some skip
    assert result["few"]["runs"][0]["train_images"] == 4 and grid.stat().st_size > 0
