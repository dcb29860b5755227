"""Conditional generation from a real (tiny) conditional run: sampling by city name,
walks within and between cities, the per-city grid, and the per-city metrics."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from gan.checkpoint import load_checkpoint
from gan.images import image_grid
from gan.metrics import EvalConfig, EvalInputs
from gan.metrics.by_city import city_swd_valwin, city_test
from gan.render import LABEL_WIDTH, city_morph_frames, real_vs_fake_by_city
from gan.sampling import city_labels, evaluation_labels, generate, load_generator
from shards.cache import load_split
from shards.conditions import condition_classes, untrained_classes
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.streaming import StreamingBatches
from shards.tar import read_shard
from shards.version import DatasetVersion
from tasks.city_report import city_numbers
from tasks.evaluate import evaluate_checkpoint
from tasks.train import train_model
from tests.tiny import TINY_MODEL, build_dataset, tiny_job

CITIES = ["austin", "paris", "tokyo"]  # tests/tiny.py's, in dataset.json order


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, conditional checkpoint, unconditional checkpoint), 4 steps each."""
    root = build_dataset(tmp_path_factory.mktemp("conditional"))
    model = replace(TINY_MODEL, conditional="city")
    conditional = train_model(tiny_job(root, model=model, run="cond"))["checkpoint"]
    plain = train_model(tiny_job(root, run="plain"))["checkpoint"]
    return root, conditional, plain


def cli(root, *args: str):
    return CliRunner().invoke(app, ["--data-root", str(root), *map(str, args)])


def test_the_checkpoint_samples_by_name_on_its_own(trained):
    _, checkpoint, _ = trained
    G, config, _ = load_generator(checkpoint)
    assert list(config.classes) == CITIES and G.classes == 3
    paris = generate(G, 4, seed=1, labels=city_labels(config, 4, "paris"))
    tokyo = generate(G, 4, seed=1, labels=city_labels(config, 4, "tokyo"))
    assert not torch.equal(paris, tokyo)  # same latents, another city
    every = generate(G, 6, seed=1)  # no labels: every city in turn
    assert torch.equal(generate(G, 6, seed=1, labels=torch.arange(6) % 3), every)


def test_cli_sample_by_city_draws_that_city(trained, tmp_path):
    root, checkpoint, _ = trained
    out = tmp_path / "paris.png"
    result = cli(root, "sample", checkpoint, "--city", "paris", "--n", "4", "--out", out)
    assert result.exit_code == 0, result.output
    G, config, _ = load_generator(checkpoint)
    expected = image_grid(generate(G, 4, labels=city_labels(config, 4, "paris")), 2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_unknown_city_is_one_line_listing_the_known_ones(trained, tmp_path):
    root, checkpoint, plain = trained
    for command in ("sample", "interpolate"):
        result = cli(root, command, checkpoint, "--city", "helsinki", "--out", tmp_path / "x")
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert "unknown city 'helsinki'" in lines[0] and "austin, paris, tokyo" in lines[0]
    result = cli(root, "sample", plain, "--city", "paris", "--out", tmp_path / "x.png")
    assert result.exit_code == 1 and "unconditional" in result.output
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_walks_within_a_city_and_between_two(trained, tmp_path):
    root, checkpoint, _ = trained
    walk = tmp_path / "walk.gif"
    result = cli(root, "interpolate", checkpoint, "--city", "tokyo", "--frames", "2", "--out", walk)
    assert result.exit_code == 0, result.output
    with Image.open(walk) as gif:
        assert gif.n_frames == 4 * 2
    morph = tmp_path / "morph.gif"
    result = cli(root, "interpolate", checkpoint, "--city", "austin", "--to-city", "tokyo",
                 "--frames", "3", "--out", morph)  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(morph) as gif:
        assert gif.n_frames == 2 * 3


def test_a_city_morph_starts_at_one_city_and_passes_through_the_other(trained):
    _, checkpoint, _ = trained
    G, _, _ = load_generator(checkpoint)
    frames = city_morph_frames(G, 0, 2, frames=2, seed=5, size=(1, 2))
    austin = image_grid(generate(G, 2, seed=5, labels=torch.tensor([0, 0])), 2)
    tokyo = image_grid(generate(G, 2, seed=5, labels=torch.tensor([2, 2])), 2)
    assert np.array_equal(np.asarray(frames[0]), np.asarray(austin))
    assert np.array_equal(np.asarray(frames[2]), np.asarray(tokyo))
    assert not np.array_equal(np.asarray(frames[1]), np.asarray(austin))


def test_the_per_city_grid_draws_every_row_for_its_city(trained, tmp_path):
    root, checkpoint, _ = trained
    G, config, state = load_generator(checkpoint)
    version = DatasetVersion(DataLayout.at(root).dataset(state["dataset"]))
    path = real_vs_fake_by_city(G, version, tmp_path / "grid.png", per_city=2)
    cells = np.asarray(Image.open(path))[:, LABEL_WIDTH:]
    side = config.resolution
    fakes = generate(G, 6, labels=torch.tensor([0, 0, 1, 1, 2, 2])).reshape(3, 2, 3, side, side)
    for row, city in enumerate(CITIES):
        top = 2 + row * (side + 2)
        for i in range(2):
            left = 2 + (2 + i) * (side + 2)
            cell = cells[top : top + side, left : left + side]
            assert np.array_equal(cell, fakes[row, i].permute(1, 2, 0).numpy()), (city, i)


def test_checkpoint_vocabulary_survives_the_round_trip(trained):
    _, checkpoint, _ = trained
    state = load_checkpoint(checkpoint)
    assert list(state["job"]["model"]["classes"]) == CITIES
    assert state["job"]["model"]["conditional"] == "city"


def _coloured(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 3, 32, 32] noisy images whose dominant channel is their label (0..2)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 120, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    images[torch.arange(n), labels] += 120
    return images, labels


def test_city_test_recognises_generated_cities_only_when_they_look_like_them():
    train, train_labels = _coloured(96, 3, 0)
    val, val_labels = _coloured(30, 3, 1)
    generated, asked = _coloured(30, 3, 2)
    inputs = EvalInputs(
        generated=generated, val=val, train=train, val_labels=val_labels,
        train_labels=train_labels, generated_labels=asked, city_names=tuple(CITIES),
    )  # fmt: skip
    good = city_test(inputs)
    assert good["val_accuracy"] > 0.9 and good["generated_accuracy"] > 0.9
    assert set(good["generated_by_city"]) == set(CITIES) and good["chance"] == 1 / 3
    inputs.generated_labels = torch.where(torch.arange(30) < 6, 3, asked)  # 3: held out
    held_out = city_test(inputs)  # a city without train images is left out, chance too
    assert held_out["generated_images"] == 24 and held_out["chance"] == 1 / 3
    inputs.generated_labels = (asked + 1) % 3  # every image drawn for the wrong city
    assert city_test(inputs)["generated_accuracy"] < 0.1
    inputs.generated_labels = None  # unconditional: no city was asked for
    assert city_test(inputs)["generated_accuracy"] is None


def _striped(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 3, 32, 32]: label 0 horizontal stripes, 1 vertical, 2 plain noise.

    (SWD normalises each descriptor set's colours, so the cities differ in structure.)"""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    stripes = (torch.arange(32) // 2 % 2 * 150).to(torch.uint8)
    images[labels == 0] += stripes[:, None]
    images[labels == 1] += stripes[None, :]
    return images, labels


def test_swd_by_city_compares_each_city_with_its_own_val_images():
    train, train_labels = _striped(60, 0)
    val, val_labels = _striped(30, 1)
    generated, asked = _striped(30, 2)
    inputs = EvalInputs(
        generated=generated, val=val, train=train, val_labels=val_labels,
        train_labels=train_labels, generated_labels=asked, city_names=tuple(CITIES),
    )  # fmt: skip
    right = city_swd_valwin(inputs)
    assert set(right["cities"]) == set(CITIES) and right["conditional"]
    assert all(c["images"] == 10 for c in right["cities"].values())
    inputs.generated_labels = (asked + 1) % 3
    wrong = city_swd_valwin(inputs)
    for city in CITIES:  # another city's images are farther from this city's val images
        assert wrong["cities"][city]["mean"] > 2 * right["cities"][city]["mean"]


def test_evaluation_reports_per_city_metrics(trained, tmp_path):
    root, checkpoint, _ = trained
    config = EvalConfig(samples=30)
    evaluation = evaluate_checkpoint(
        checkpoint, root, config=config, out_dir=tmp_path, device="cpu", workers=1
    )
    metrics = evaluation["metrics"]
    by_city, test = metrics["city_swd30_valwin"], metrics["city_test30"]
    assert by_city["computed"] and by_city["conditional"]
    assert set(test["generated_by_city"]) == set(CITIES)
    assert "city_test30" in [row[0] for row in evaluation["headline"]]
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["metrics"]["city_test30"] == test
    report = (tmp_path / "report.html").read_text()
    assert "<h2>Per city</h2>" in report and "tokyo" in report
    numbers = city_numbers(metrics)  # what MLflow gets as eval.<name> run metrics
    assert {f"city_test30.{c}" for c in CITIES} <= set(numbers)
    assert {f"city_swd30_valwin.{c}" for c in by_city["cities"]} <= set(numbers)


# ---------------------------------------------------------------- by day or night


@pytest.fixture(scope="module")
def by_night(tmp_path_factory):
    """(data root, version, a city,night checkpoint): every 3rd sequence is a night one."""
    root = build_dataset(tmp_path_factory.mktemp("night"), night_every=3)
    model = replace(TINY_MODEL, conditional="city,night")
    result = train_model(tiny_job(root, model=model, run="night"))
    version = DatasetVersion(DataLayout.at(root).dataset(result["dataset"]))
    return root, version, result["checkpoint"]


def test_night_labels_come_from_each_samples_metadata(by_night):
    _, version, _ = by_night
    manifest = pq.read_table(version.path / "manifest.parquet").to_pylist()
    night_of = {row["key"]: row["night"] for row in manifest}
    for split in ("train", "val"):
        _, cities = load_split(version, split, workers=1)
        _, classes = load_split(version, split, workers=1, condition="city,night")
        keys = [k for s in version.shards(split) for k, _, _ in read_shard(version.url(s))]
        nights = torch.tensor([night_of[k] for k in keys])
        assert torch.equal(classes, 2 * cities + nights)
        assert nights.any() and not nights.all()  # both kinds, so the test can tell
    streamed = StreamingBatches(version, "train", LoaderConfig(workers=1), batch_size=4,
                                in_process=True, condition="city,night")  # fmt: skip
    epoch = torch.cat([next(streamed)[1] for _ in range(streamed.batches_per_epoch)])
    _, classes = load_split(version, "train", workers=1, condition="city,night")
    counts = torch.bincount(classes, minlength=6)
    assert (torch.bincount(epoch, minlength=6) <= counts).all()  # each sample once at most
    assert (epoch % 2 == 1).any()  # night classes stream too


def test_a_city_night_checkpoint_knows_each_city_by_day_and_night(by_night, tmp_path):
    root, _, checkpoint = by_night
    G, config, _ = load_generator(checkpoint)
    assert config.classes == tuple(n for c in CITIES for n in (c, f"{c} night"))
    assert G.classes == 6
    day = city_labels(config, 3, "paris")
    night = city_labels(config, 3, "paris", night=True)
    assert day.tolist() == [2, 2, 2] and night.tolist() == [3, 3, 3]
    assert city_labels(config, 4, night=True).tolist() == [1, 3, 5, 1]  # every city at night
    out = tmp_path / "paris-night.png"
    result = cli(root, "sample", checkpoint, "--city", "paris", "--night", "--n", "4", "--out", out)
    assert result.exit_code == 0, result.output
    expected = image_grid(generate(G, 4, labels=city_labels(config, 4, "paris", True)), 2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert not torch.equal(
        generate(G, 4, labels=day[:1].repeat(4)), generate(G, 4, labels=night[:1].repeat(4))
    )


def test_night_is_refused_in_one_line_where_the_model_lacks_it(by_night, trained, tmp_path):
    root, _, checkpoint = by_night
    result = cli(root, "sample", checkpoint, "--city", "oslo", "--out", tmp_path / "x.png")
    assert result.exit_code == 1
    assert "unknown city 'oslo'" in result.output and "austin, paris, tokyo" in result.output
    _, city_only, plain = trained
    for model, expected in ((city_only, "not conditioned on night"), (plain, "unconditional")):
        result = cli(root, "sample", model, "--night", "--out", tmp_path / "y.png")
        assert result.exit_code == 1 and expected in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_evaluation_samples_mix_day_and_night_as_each_citys_val_images_do():
    config = replace(TINY_MODEL, conditional="city,night", classes=("a", "a night", "b", "b night"))
    labels = evaluation_labels(config, 40, torch.tensor([0.25, 0.0]))
    a, b = labels[0::2], labels[1::2]  # every city in turn
    assert set(a.tolist()) == {0, 1} and (a == 1).sum() == 5  # 20 of a's, a quarter at night
    assert b.tolist() == [2] * 20
    city_only = replace(TINY_MODEL, conditional="city", classes=("a", "b"))
    assert evaluation_labels(city_only, 4).tolist() == [0, 1, 0, 1]


def test_a_city_night_evaluation_reports_per_city_metrics(by_night, tmp_path):
    root, _, checkpoint = by_night
    evaluation = evaluate_checkpoint(
        checkpoint, root, config=EvalConfig(samples=30), out_dir=tmp_path, device="cpu", workers=1
    )
    test = evaluation["metrics"]["city_test30"]
    assert set(test["generated_by_city"]) == set(CITIES)  # cities, not their night classes
    assert evaluation["metrics"]["city_swd30_valwin"]["conditional"]


def test_classes_without_train_images_are_recorded_and_refused(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    rows = {"city_index": [0, 0, 1, 2], "night": [False, True, False, False],
            "split": ["train", "train", "train", "val"]}  # fmt: skip
    pq.write_table(pa.table(rows), manifest)
    classes = condition_classes(("a", "b", "c"), "city,night")
    untrained = untrained_classes(classes, manifest, "city,night")
    assert untrained == ("b night", "c", "c night")  # c is held out: val images only
    config = replace(TINY_MODEL, conditional="city,night", classes=classes, untrained=untrained)
    assert city_labels(config, 2, "b").tolist() == [2, 2]
    for city, night in (("c", False), ("b", True)):
        with pytest.raises(ValueError, match="had no train images") as error:
            city_labels(config, 2, city, night)
        assert "choose one of: a, b" in str(error.value)
    assert city_labels(config, 3, night=True).tolist() == [1, 1, 1]  # the one night learned


def test_a_held_out_city_is_refused_and_left_blank_in_the_per_city_grid(tmp_path):
    root = build_dataset(tmp_path, holdout=("tokyo",))
    model = replace(TINY_MODEL, conditional="city")
    checkpoint = train_model(tiny_job(root, model=model, run="held"))["checkpoint"]
    G, config, state = load_generator(checkpoint)
    assert config.classes == tuple(CITIES) and config.untrained == ("tokyo",)
    result = cli(root, "sample", checkpoint, "--city", "tokyo", "--out", tmp_path / "t.png")
    assert result.exit_code == 1 and "had no train images" in result.output
    assert "choose one of: austin, paris" in result.output and not (tmp_path / "t.png").exists()
    version = DatasetVersion(DataLayout.at(root).dataset(state["dataset"]))
    cells = np.asarray(Image.open(real_vs_fake_by_city(G, version, tmp_path / "g.png", 2)))
    side, tokyo = config.resolution, 2
    row = cells[2 + tokyo * (side + 2) : 2 + tokyo * (side + 2) + side, LABEL_WIDTH:]
    assert not row.any()  # no val images and no drawing from an untrained class
