"""Dataset versions end to end on real zips and real tars (no Prefect here)."""

from __future__ import annotations

import json
import tarfile
from collections import Counter

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from shards.catalog import CatalogConfig, build_catalog
from shards.dataset import DatasetError, load_info, plan_dataset, resolve_version
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.pipeline import prepare_dataset
from shards.split import SplitConfig
from shards.verify import verify_dataset
from tests.msls_builder import MslsBuilder, Row

ONE_CORE = CatalogConfig(workers=1)
SMALL_SHARDS = ShardConfig(shard_size=4)
SPLIT = SplitConfig(val_fraction=0.25)


def source(tmp_path, extra_city: str | None = None):
    b = MslsBuilder()
    for city in ("austin", "paris", "sf"):  # sf: an MSLS val city -> ood
        for s in range(5):
            b.sequence(city, f"{city}seq{s}", 2 + s % 3, seed=s)
    if extra_city:
        b.sequence(extra_city, "newseq", 3)
    b.image("austin", Row("broken", "austinseq0", 9), b"")
    return b.write(tmp_path / f"src-{extra_city}")


@pytest.fixture
def built(tmp_path):
    src = source(tmp_path)
    layout = DataLayout.at(tmp_path / "data")
    plan, path = prepare_dataset(src, layout, SPLIT, SMALL_SHARDS, ONE_CORE)
    return src, layout, plan, path


def manifest(path):
    return pq.read_table(path / "manifest.parquet").to_pylist()


def test_version_is_complete_and_latest_points_to_it(built):
    _, layout, plan, path = built
    assert resolve_version(layout) == plan.version == path.name
    info = load_info(layout)
    assert info.version == plan.version
    assert set(info.counts) == {"train", "val", "ood"}
    assert set(info.counts["ood"]) == {"sf"}
    assert info.dropped == {"corrupt": 1}
    assert info.cities == ["austin", "paris", "sf"]
    assert not any(p.name.startswith(".staging") for p in layout.datasets.iterdir())


def test_every_ok_image_is_in_exactly_one_shard(built):
    path = built[3]
    in_tars = Counter()
    for tar_path in path.glob("*/*/*.tar"):
        with tarfile.open(tar_path) as tar:
            in_tars.update(
                m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".jpg")
            )
    rows = manifest(path)
    assert all(n == 1 for n in in_tars.values())
    assert set(in_tars) == {r["key"] for r in rows}
    assert len(rows) == 3 * (2 + 3 + 4 + 2 + 3)
    assert "broken" not in in_tars


def test_no_sequence_in_two_splits(built):
    splits: dict[str, set[str]] = {}
    for row in manifest(built[3]):
        splits.setdefault(row["sequence_key"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_shards_read_back_with_plain_webdataset(built):
    path = built[3]
    urls = sorted(str(p) for p in path.glob("train/*/*.tar"))
    samples = list(
        wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("jpg", "json", "cls")
    )
    info = json.loads((path / "dataset.json").read_text())
    assert len(samples) == info["totals"]["train"]
    image, meta, cls = samples[0]
    assert image.shape == (64, 128, 3)
    assert meta["split"] == "train" and info["cities"][int(cls)] == meta["city"]


def test_rerun_is_a_noop_with_the_same_version(built):
    src, layout, plan, path = built
    stamp = (path / "dataset.json").stat().st_mtime_ns
    again, again_path = prepare_dataset(src, layout, SPLIT, SMALL_SHARDS, ONE_CORE)
    assert again.version == plan.version and again.complete
    assert (again_path / "dataset.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("left", ["plan.parquet", "plan.json"])
def test_a_run_killed_between_the_two_plan_files_is_finished_by_the_next(tmp_path, left):
    """A kill after one of the staged plan files was written and before the other."""
    src = source(tmp_path)
    layout = DataLayout.at(tmp_path / "data")
    catalog = build_catalog(src, layout.catalog, ONE_CORE)
    plan = plan_dataset(catalog, layout, SPLIT, SMALL_SHARDS)
    for name in {"plan.parquet", "plan.json"} - {left}:
        (plan.staging / name).unlink()
    again, path = prepare_dataset(src, layout, SPLIT, SMALL_SHARDS, ONE_CORE)
    assert again.version == plan.version and verify_dataset(path, workers=1).ok
    assert load_info(layout).cities == ["austin", "paris", "sf"]


def test_other_params_give_another_version(built):
    src, layout, plan, _ = built
    other, _ = prepare_dataset(
        src, layout, SPLIT, ShardConfig(shard_size=4, resolution=128), ONE_CORE
    )
    assert other.version != plan.version
    assert resolve_version(layout) == other.version
    assert resolve_version(layout, plan.version) == plan.version  # the old one is still there


def test_added_data_moves_no_sequence(built, tmp_path):
    _, layout, plan, path = built
    before = {r["sequence_key"]: r["split"] for r in manifest(path)}
    bigger = source(tmp_path, extra_city="zurich")
    new, new_path = prepare_dataset(bigger, layout, SPLIT, SMALL_SHARDS, ONE_CORE)
    assert new.version != plan.version
    after = {r["sequence_key"]: r["split"] for r in manifest(new_path)}
    assert {k: after[k] for k in before} == before
    assert "newseq" in after


def test_verify_passes_then_finds_a_damaged_shard(built):
    path = built[3]
    report = verify_dataset(path, workers=1)
    assert report.ok and report.samples == len(manifest(path))
    victim = sorted(path.glob("train/*/*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:700])
    report = verify_dataset(path, workers=1)
    assert not report.ok
    assert any(victim.name in p for p in report.problems)


def test_unknown_version_is_one_clear_error(tmp_path):
    layout = DataLayout.at(tmp_path)
    with pytest.raises(DatasetError, match="run `msls prepare` first"):
        resolve_version(layout)
    with pytest.raises(DatasetError, match="no such dataset version"):
        resolve_version(layout, "abc123")
