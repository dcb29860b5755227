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
from gan.metrics import EvalConfig, EvalInputs, compute_metric, metric_names
from gan.metrics.inception import NO_INCEPTION
from gan.models import ModelConfig
from gan.sampling import generate, interpolation_steps, load_discriminator, load_generator, slerp
from shards.catalog import CatalogConfig
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.pipeline import prepare_dataset
from shards.split import SplitConfig
from tasks.evaluate import evaluate_checkpoint
from tasks.report import render_report
from tasks.train import TrainJob, train_model
from tasks.verdicts import headline, summary_markdown, swd_verdict, training_health
from tests.msls_builder import MslsBuilder
from tests.tiny import TINY_TRAIN

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
            train=TINY_TRAIN,
            loader=LoaderConfig(cache="host", workers=0),
        )
    )
    started = time.perf_counter()
    evaluation = evaluate_checkpoint(
        result["checkpoint"], layout.root, config=EvalConfig(samples=64), device="cpu", workers=1
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
    assert on_disk["schema"] == 2 and on_disk["step"] == 2 and on_disk["n_samples"] == 64
    assert on_disk["dataset"] == result["dataset"]
    assert list(on_disk["metrics"]) == metric_names(64)
    metrics = on_disk["metrics"]
    not_computed = {"computed": False, "reason": NO_INCEPTION}
    assert metrics["fid64_valwin"] == metrics["kid64_valwin"] == not_computed
    swd = metrics["swd64_valwin"]
    assert swd["computed"] and set(swd["levels"]) == {"64", "32", "16"} and swd["draws"] == 3
    assert swd["mean"] > swd["floor_mean"] > 0 and swd["floor_std"] > 0
    assert swd["ratio"] > swd["ratio_as_real"]  # 2 steps of training: far from real
    probe = metrics["probe_city"]
    assert probe["computed"] and probe["classes"] == 3 and probe["split"] == "sequence"
    assert 0 <= probe["accuracy"] <= 1 and 0 <= probe["random_d_accuracy"] <= 1
    assert probe["chance"] == pytest.approx(1 / 3)
    for name in ("memorisation", "diversity"):
        assert metrics[name]["computed"] and metrics[name]["ratio"] > 0
    for row in on_disk["headline"]:
        assert len(row) == 4 and row[0] in [*metrics, "training"] and isinstance(row[3], str)
    verdicts = {row[0]: row[3] for row in on_disk["headline"]}
    assert not verdicts["swd64_valwin"].startswith(("as good as real", "near real"))
    assert verdicts["training"].startswith("2 steps")
    assert "| swd64_valwin |" in summary_markdown(on_disk)


def test_every_result_is_appended_to_its_metric_jsonl(run):
    result, evaluation = run
    for name, value in evaluation["metrics"].items():
        lines = (Path(result["run_dir"]) / f"metric-{name}.jsonl").read_text().splitlines()
        line = json.loads(lines[-1])
        assert line["metric"] == name and line["step"] == 2
        assert line["results"] == json.loads(json.dumps(value))
        assert line["snapshot"] == str(result["checkpoint"])


def test_report_is_self_contained_and_embeds_both_grids(run):
    result, _ = run
    report = (Path(result["run_dir"]) / "report.html").read_text()
    assert "http://" not in report and "https://" not in report
    assert not re.search(r"""(src|href)=(?!["']?data:)""", report)  # nothing to fetch
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", report)
    assert len(images) == 2
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert "swd64_valwin" in report and "probe_city" in report
    assert "Training health" in report and "The budget bought 2 generator steps" in report


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
        evaluate_checkpoint(result["checkpoint"], tmp_path, config=EvalConfig(64, str(bad)))


def _stats_line(step: int, gap: float, real_pos: float, diversity: float, health: list) -> str:
    """One stats.jsonl line as gan/loop.py writes it (health fields since issue 13)."""
    line = {"step": step, "loss_d": 0.05, "loss_g": 5.0, "logit_gap": gap, "real_pos": real_pos}
    line |= {"diversity": diversity, "real_diversity": 0.45, "ada_p": 0.0, "seconds": step / 5}
    return json.dumps({**line, "images_per_s": 160.0, "health": health}) + "\n"


def test_training_health_section_reports_the_budget_and_the_warnings(run, tmp_path):
    _, evaluation = run
    won = "D is overpowering G (real logits > 0: 99%, logit gap 6.0): G gets little gradient"
    grey = "samples collapsed (diversity 0.010 vs real 0.450)"
    (tmp_path / "stats.jsonl").write_text(
        _stats_line(50, 1.0, 0.7, 0.3, [])
        + _stats_line(100, 6.0, 0.99, 0.01, [won, grey])
        + '{"step": 150, "loss_d": 0.0'  # a torn last line (killed run) is skipped
        + "\n"
        + _stats_line(150, 6.2, 0.99, 0.01, [won])
    )
    health = training_health(tmp_path, 150)
    assert health["steps"] == 150 and health["seconds"] == 30 and health["health_logged"]
    kinds = {w["kind"]: (w["first_step"], w["last_step"], w["count"]) for w in health["warnings"]}
    assert kinds == {"D is overpowering G": (100, 150, 2), "samples collapsed": (100, 100, 1)}
    assert health["series"]["real_pos"] == [[50, 0.7], [100, 0.99], [150, 0.99]]
    row = headline(evaluation["metrics"], health)[-1]
    assert row[:2] == ["training", 150] and "D is overpowering G from step 100" in row[3]
    generated = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    page = render_report({**evaluation, "training": health}, generated, generated)
    assert "The budget bought 150 generator steps in 30 s" in page
    assert page.count("class=warn") == 2 and "real logits &gt; 0" in page


def test_training_health_of_an_older_run_says_what_is_missing(tmp_path):
    (tmp_path / "stats.jsonl").write_text(json.dumps({"step": 20, "loss_d": 1.2}) + "\n")
    health = training_health(tmp_path, 20)
    assert not health["health_logged"] and health["warnings"] == []
    assert "no health metrics logged" in headline({}, health)[0][3]
    assert training_health(tmp_path / "nowhere", 7)["log_lines"] == 0


def test_grey_samples_are_never_called_near_real():
    """The quickstart's old failure: uniform grey samples. Their SWD verdict must say what
    a person sees, whatever the ratio."""
    g = torch.Generator().manual_seed(0)
    strips = torch.randint(0, 256, (32, 3, 32, 64), generator=g, dtype=torch.uint8)
    grey = torch.full((32, 3, 32, 32), 128, dtype=torch.uint8)
    inputs = EvalInputs(grey, strips, strips)
    metrics = {name: compute_metric(name, inputs) for name in ("swd32_valwin", "diversity")}
    verdicts = {row[0]: row[3] for row in headline(metrics)}
    assert verdicts["diversity"] == "mode collapse"
    assert verdicts["swd32_valwin"].startswith("far from real: samples collapsed")
    fake_good = {**metrics["swd32_valwin"], "ratio": 1.0}  # even a perfect-looking number
    assert swd_verdict(fake_good, collapsed=True).startswith("far from real")
