"""evaluate_checkpoint end to end: a real dataset version, a 2-step checkpoint, the files."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
import torch

from gan.checkpoint import CheckpointError
from gan.metrics import NO_INCEPTION, metric_names
from gan.models import ModelConfig
from gan.sampling import generate, interpolation_steps, load_discriminator, load_generator, slerp
from gan.trainer import TrainConfig
from shards.catalog import CatalogConfig
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.pipeline import prepare_dataset
from shards.split import SplitConfig
from tasks.evaluate import evaluate_checkpoint, summary_markdown
from tasks.train import TrainJob, train_model
from tests.msls_builder import MslsBuilder

TOP_KEYS = {"schema", "checkpoint", "step", "dataset", "created", "n_samples", "metrics"}
TOP_KEYS |= {"headline"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    builder = MslsBuilder()
    for c, city in enumerate(("austin", "paris", "tokyo")):
        for s in range(6):  # distinct seeds: no val image is a pixel copy of a train image
            builder.sequence(city, f"{city}{s}", 3, seed=100 * c + 10 * s, size=(160, 120))
    layout = DataLayout.at(root / "data")
    prepare_dataset(
        builder.write(root / "src"),
        layout,
        SplitConfig(val_fraction=0.3),
        ShardConfig(shard_size=8),
        CatalogConfig(workers=1),
    )
    result = train_model(
        TrainJob(
            data_root=str(layout.root),
            device="cpu",
            steps=2,
            model=ModelConfig(nz=16, ngf=8, ndf=8),
            train=TrainConfig(batch_size=8),
            loader=LoaderConfig(cache="host", workers=0),
        )
    )
    started = time.perf_counter()
    evaluation = evaluate_checkpoint(
        result["checkpoint"], layout.root, n_samples=64, device="cpu", workers=1
    )
    print(f"evaluate_checkpoint: {time.perf_counter() - started:.1f} s")
    print(summary_markdown(evaluation))
    return result, evaluation


def test_evaluation_json_follows_the_documented_schema(run):
    result, evaluation = run
    path = Path(result["run_dir"]) / "evaluation.json"
    on_disk = json.loads(Path(path).read_text())
    assert on_disk == json.loads(json.dumps(evaluation))
    assert set(on_disk) >= TOP_KEYS
    assert on_disk["schema"] == 1 and on_disk["step"] == 2 and on_disk["n_samples"] == 64
    assert on_disk["dataset"] == result["dataset"]
    assert list(on_disk["metrics"]) == metric_names()
    metrics = on_disk["metrics"]
    assert metrics["fid_val"] == metrics["kid_val"] == {"computed": False, "reason": NO_INCEPTION}
    swd = metrics["swd_val"]
    assert swd["computed"] and set(swd["levels"]) == {"64", "32", "16"}
    assert swd["mean"] > swd["floor_mean"] > 0  # 2 steps of training: far from real
    probe = metrics["probe_city"]
    assert probe["computed"] and probe["classes"] == 3 and probe["split"] == "sequence"
    assert 0 <= probe["accuracy"] <= 1 and 0 <= probe["random_d_accuracy"] <= 1
    assert probe["chance"] == pytest.approx(1 / 3)
    for name in ("memorisation", "diversity"):
        assert metrics[name]["computed"] and metrics[name]["ratio"] > 0
    for row in on_disk["headline"]:
        assert len(row) == 4 and row[0] in metrics and isinstance(row[3], str)
    assert "| swd_val |" in summary_markdown(on_disk)


def test_report_is_self_contained_and_embeds_both_grids(run):
    result, _ = run
    report = (Path(result["run_dir"]) / "report.html").read_text()
    assert "http://" not in report and "https://" not in report
    assert not re.search(r"""(src|href)=(?!["']?data:)""", report)  # nothing to fetch
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", report)
    assert len(images) == 2
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert "swd_val" in report and "probe_city" in report


def test_sampling_api_is_deterministic_and_uses_the_checkpoint_config(run):
    result, _ = run
    G, config, state = load_generator(result["checkpoint"], "cpu")
    D, _, _ = load_discriminator(result["checkpoint"], "cpu")
    assert config == ModelConfig(nz=16, ngf=8, ndf=8) and state["step"] == 2
    assert not G.training and not D.training
    images = generate(G, 5, seed=3, batch=2)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 64, 64)
    assert torch.equal(images, generate(G, 5, seed=3, batch=4))
    assert not torch.equal(images, generate(G, 5, seed=4))
    truncated = generate(G, 5, seed=3, truncation=0.5)
    assert truncated.shape == images.shape
    a, b = torch.randn(2, 16).unbind()
    path = slerp(a, b, interpolation_steps(5))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert path.shape == (5, 16)


def test_bad_inputs_get_one_clear_line(run, tmp_path):
    result, _ = run
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        evaluate_checkpoint(tmp_path / "nope.pt", tmp_path)
    bad = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torch-fidelity InceptionV3 state_dict"):
        evaluate_checkpoint(result["checkpoint"], tmp_path, inception_weights=bad)
