"""A train-only dataset version, --val-fraction 0 (#14, fault 7).

Decided: legitimate (all the data for training). Training runs; what needs val (the
evaluation, the real-vs-generated grid) says so and is skipped; the run succeeds. Never
a failure after the training budget is spent.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from shards.catalog import CatalogConfig
from shards.dataset import load_info
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.pipeline import prepare_dataset
from shards.split import SplitConfig
from tasks.evaluate import evaluate_checkpoint
from tasks.render import BY_CITY, INTERPOLATION, NEIGHBOURS, render_run
from tasks.train import train_model
from tasks.verdicts import summary_markdown
from tests.msls_builder import two_city_source
from tests.tiny import tiny_job


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-only")
    layout = DataLayout.at(root / "data")
    prepare_dataset(
        two_city_source(root / "src", sequences=8, size=(160, 120)), layout,
        SplitConfig(val_fraction=0.0), ShardConfig(shard_size=8), CatalogConfig(workers=1),
    )  # fmt: skip
    return layout, train_model(tiny_job(layout.root, run="r", steps=2))


def test_the_version_has_no_val_and_trains(trained):
    layout, result = trained
    info = load_info(layout)
    assert info.samples("val") == 0 and info.samples("train") == 24  # 8 sequences x 3 frames
    assert result["step"] == 2


def test_renders_skip_only_what_needs_val(trained, tmp_path, caplog):
    layout, result = trained
    paths = render_run(result["checkpoint"], layout.root, tmp_path)
    assert [p.name for p in paths] == [INTERPOLATION, NEIGHBOURS]
    assert not (tmp_path / BY_CITY).exists()
    assert "no val split" in caplog.text


def test_evaluation_says_it_was_skipped_and_succeeds(trained, tmp_path):
    layout, result = trained
    evaluation = evaluate_checkpoint(result["checkpoint"], layout.root, out_dir=tmp_path)
    assert "no val split" in evaluation["skipped"] and evaluation["metrics"] == {}
    assert json.loads((tmp_path / "evaluation.json").read_text()) == evaluation
    assert "no val split" in (tmp_path / "report.html").read_text()
    assert evaluation["skipped"] in summary_markdown(evaluation)


@pytest.mark.slow
def test_msls_train_on_a_train_only_version_succeeds(prefect_api, trained, monkeypatch):
    """case16 through the CLI: train, render, evaluate and track, exit 0."""
    layout, _ = trained
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--data-root", str(layout.root), "train", "--device", "cpu", "--steps", "2",
            "--batch-size", "8", "--ngf", "8", "--ndf", "8"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
