"""The reader: real shards of a small real dataset version, read back every way we offer."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from shards.cache import CachedBatches, city_weights, load_split
from shards.catalog import CatalogConfig, build_catalog
from shards.dataset import finalize_dataset, plan_dataset
from shards.errors import DatasetError
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.reader import make_batches
from shards.split import SplitConfig
from shards.streaming import StreamingBatches
from shards.tar import read_shard
from shards.version import DatasetVersion
from shards.writer import write_shard
from tests.msls_builder import MslsBuilder

# imbalanced on purpose: 36 / 12 / 6 photos; every photo distinct (its own seed)
CITIES = {"austin": (6, 6), "boston": (3, 4), "paris": (2, 3)}  # sequences, frames each
SHARD = ShardConfig(shard_size=4)


@pytest.fixture(scope="session")
def version(tmp_path_factory) -> DatasetVersion:
    root = tmp_path_factory.mktemp("reader")
    builder = MslsBuilder()
    for c, (city, (sequences, frames)) in enumerate(CITIES.items()):
        for s in range(sequences):
            builder.sequence(city, f"{city}-s{s}", frames, seed=1000 * c + 100 * s)
    src = builder.write(root / "src")
    layout = DataLayout.at(root / "data")
    catalog = build_catalog(src, layout.catalog, CatalogConfig(workers=1))
    plan = plan_dataset(catalog, layout, SplitConfig(val_fraction=0.25), SHARD)
    for job in plan.jobs(src, SHARD):
        write_shard(job)
    return DatasetVersion(finalize_dataset(plan, layout, catalog, "test"))


@pytest.fixture(scope="session")
def train(version) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split(version, "train", workers=1)


def fingerprints(images: torch.Tensor) -> list[str]:
    """One id per image: the fixture's photos are all different."""
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]


def epoch_of(batches, n: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(batches) for _ in range(n or batches.batches_per_epoch)]


def ids_of(batches: list) -> list[str]:
    return [i for images, _ in batches for i in fingerprints(images)]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b)
    )


# ---------------------------------------------------------------- version and load_split


def test_version_describes_the_directory(version):
    manifest = pq.read_table(version.path / "manifest.parquet").to_pylist()
    assert version.strip_size == (128, 64) and version.resolution == 64
    assert version.cities == sorted(CITIES)
    assert version.samples("train") == sum(r["split"] == "train" for r in manifest)
    assert len(version.shards("train")) >= 8  # many small shards, several per city
    assert version.shards("train") == sorted(version.shards("train"))
    assert all(s.startswith("val/") for s in version.shards("val"))


def test_a_missing_version_names_its_file(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset\.json.*msls prepare"):
        DatasetVersion(tmp_path)


def test_load_split_decodes_every_sample_like_pil(version, train):
    images, cls = train
    n = version.samples("train")
    assert images.shape == (n, 3, 64, 128) and images.dtype == torch.uint8
    assert cls.shape == (n,) and cls.dtype == torch.int64
    counts = version.info.counts["train"]
    assert cls.bincount(minlength=3).tolist() == [counts.get(c, 0) for c in version.cities]
    first = version.shards("train")[0]
    with tarfile.open(version.url(first)) as tar:
        jpg = tar.extractfile(tar.getmembers()[0]).read()
    pil = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).transpose(2, 0, 1)
    diff = np.abs(images[0].numpy().astype(int) - pil.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5  # IDCTs differ by a unit or two
    assert len(set(fingerprints(images))) == n


def test_load_split_in_worker_processes_gives_the_same_tensors(version, train):
    images, cls = load_split(version, "train", workers=2)
    assert torch.equal(images, train[0]) and torch.equal(cls, train[1])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_load_equal_disjoint_parts_that_cover_the_split(version, train, world_size):
    parts = [
        load_split(version, "train", rank=r, world_size=world_size, workers=1)
        for r in range(world_size)
    ]
    n = version.samples("train")
    assert [len(images) for images, _ in parts] == [n // world_size] * world_size
    ids = [set(fingerprints(images)) for images, _ in parts]
    assert sum(map(len, ids)) == len(set().union(*ids))  # disjoint
    assert len(set(fingerprints(train[0])) - set().union(*ids)) == n % world_size


# ---------------------------------------------------------------- cached batches


def test_a_cached_epoch_visits_every_sample_once(train):
    images, cls = train
    batches = CachedBatches(images, cls, 3, LoaderConfig(), batch_size=1)
    seen = ids_of(epoch_of(batches))
    assert sorted(seen) == sorted(fingerprints(images))
    assert batches.state_dict()["epoch"] == 1 and batches.state_dict()["batch"] == 0


def test_cached_batches_have_the_trainer_shapes(train):
    images, labels = next(CachedBatches(*train, 3, LoaderConfig(), batch_size=5))
    assert images.shape == (5, 3, 64, 128) and images.dtype == torch.uint8
    assert labels.shape == (5,) and labels.dtype == torch.int64


def test_temperature_zero_draws_cities_uniformly(train):
    images, cls = train
    assert cls.bincount().max() >= 4 * cls.bincount().min()  # the fixture is imbalanced
    batches = CachedBatches(images, cls, 3, LoaderConfig(city_temperature=0.0), batch_size=8)
    drawn = torch.cat([next(batches)[1] for _ in range(300)])
    observed = drawn.bincount(minlength=3).double()
    expected = len(drawn) / 3
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_city_weights_follow_the_temperature():
    cls = torch.tensor([0] * 8 + [1] * 2)
    for t, share in ((1.0, 0.8), (0.0, 0.5), (0.5, 8**0.5 / (8**0.5 + 2**0.5))):
        w = city_weights(cls, 2, t)
        assert w[:8].sum() / w.sum() == pytest.approx(share)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_cached_batches_resume_exactly(train, temperature):
    config = LoaderConfig(city_temperature=temperature)
    run = dict(batch_size=4)
    whole = CachedBatches(*train, 3, config, **run, generator_seed=7)
    expected = epoch_of(whole, 25)  # crosses epoch boundaries
    first = CachedBatches(*train, 3, config, **run, generator_seed=7)
    epoch_of(first, 13)
    state = first.state_dict()
    resumed = CachedBatches(*train, 3, config, **run, generator_seed=7)
    resumed.load_state_dict(state)
    assert same(epoch_of(resumed, 12), expected[13:])


# ---------------------------------------------------------------- streaming


def test_streamed_epoch_reads_each_sample_once_with_two_workers(version, train):
    batches = StreamingBatches(version, "train", LoaderConfig(workers=2), batch_size=1)
    assert batches.plan.streams == 2
    epoch = epoch_of(batches)
    assert batches.state_dict() == {"epoch": 1, "batch": 0, "streams": 2}
    assert sorted(ids_of(epoch)) == sorted(fingerprints(train[0]))
    images, labels = next(batches)  # and the next epoch starts
    assert images.shape == (1, 3, 64, 128) and labels.dtype == torch.int64
    batches.close()


def test_worker_processes_yield_what_one_process_yields(version):
    config = LoaderConfig(workers=2, shuffle_buffer=5)
    run = dict(batch_size=3, seed=1)
    local = StreamingBatches(version, "train", config, **run, in_process=True)
    n = local.batches_per_epoch + 4  # into the second epoch
    pooled = StreamingBatches(version, "train", config, **run)
    assert same(epoch_of(pooled, n), epoch_of(local, n))
    pooled.close()


def test_ranks_stream_the_same_number_of_disjoint_batches(version):
    config = LoaderConfig(workers=2)
    run = dict(batch_size=2)
    ranks = [
        StreamingBatches(version, "train", config, **run, rank=r, world_size=2, in_process=True)
        for r in (0, 1)
    ]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch
    assert ranks[0].batches_per_epoch == version.samples("train") // 4
    ids = [set(ids_of(epoch_of(b))) for b in ranks]
    assert [b.epoch for b in ranks] == [1, 1] and [b.batch for b in ranks] == [0, 0]
    assert not ids[0] & ids[1]  # each epoch's shards are cut between the ranks


@pytest.mark.parametrize("in_process", [True, False])
def test_streaming_resumes_exactly(version, in_process):
    config = LoaderConfig(workers=2, shuffle_buffer=6)
    run = dict(batch_size=3, seed=5)
    whole = StreamingBatches(version, "train", config, **run, in_process=True)
    per_epoch = whole.batches_per_epoch
    expected = epoch_of(whole, per_epoch + 6)
    for stop in (3, per_epoch + 1):  # mid-epoch (an odd batch: the other worker's turn)
        first = StreamingBatches(version, "train", config, **run, in_process=True)
        epoch_of(first, stop)
        resumed = StreamingBatches(version, "train", config, **run, in_process=in_process)
        resumed.load_state_dict(first.state_dict())
        assert same(epoch_of(resumed, 5), expected[stop : stop + 5]), stop
        resumed.close()


def test_streaming_temperature_zero_balances_cities(version):
    config = LoaderConfig(workers=1, city_temperature=0.0, shuffle_buffer=20)
    run = dict(batch_size=8)
    batches = StreamingBatches(version, "train", config, **run, in_process=True)
    drawn = torch.cat([next(batches)[1] for _ in range(60)])
    shares = drawn.bincount(minlength=3).double() / len(drawn)
    assert shares.min() > 0.2 and shares.max() < 0.47  # natural: austin alone is ~0.65


def test_shards_read_with_plain_webdataset(version):
    urls = [version.url(s) for s in version.shards("train")]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert len(samples) == version.samples("train")
    assert samples[0]["jpg"].shape == (64, 128, 3)
    assert {int(s["cls"]) for s in samples} <= set(range(len(version.cities)))
    assert "." not in samples[0]["__key__"] and samples[0]["json"]["split"] == "train"


# ---------------------------------------------------------------- bad shards


def test_read_shard_takes_any_tar_and_catches_a_cut_between_members(version, tmp_path):
    shard = version.shards("train")[0]
    first = version.url(shard)
    ours = list(read_shard(first, version.shard_samples(shard)))
    pax = tmp_path / "pax.tar"  # another writer's format: pax headers, a long name
    with tarfile.open(first) as src, tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        for ext, payload in (("jpg", bytes(ours[0][1])), ("cls", b"1")):
            member = tarfile.TarInfo("d" * 120 + f"/long.{ext}")
            member.size = len(payload)
            dst.addfile(member, io.BytesIO(payload))
    theirs = list(read_shard(str(pax)))
    assert [(k, bytes(j), c) for k, j, c in theirs[:-1]] == [(k, bytes(j), c) for k, j, c in ours]
    assert theirs[-1][0] == "long" and theirs[-1][2] == 1
    with tarfile.open(first) as tar:  # cut exactly after the first sample's three members
        third = tar.getmembers()[2]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(first).read_bytes()[: third.offset_data + (third.size + 511) // 512 * 512])
    assert len(list(read_shard(str(cut)))) == 1  # a valid tar of one sample...
    with pytest.raises(ValueError, match=r"cut\.tar: unreadable shard \(1 samples, dataset"):
        list(read_shard(str(cut), len(ours)))  # ...that dataset.json says is longer


@pytest.fixture
def damaged(version, tmp_path):
    """A copy of the version with one shard deleted and another truncated."""
    copy = DatasetVersion(shutil.copytree(version.path, tmp_path / version.version))
    shards = copy.shards("train")
    missing, truncated = shards[0], shards[-1]
    (copy.path / missing).unlink()
    data = (copy.path / truncated).read_bytes()
    (copy.path / truncated).write_bytes(data[: len(data) // 2 + 100])
    return copy, missing, truncated


def test_a_bad_shard_stops_the_reader_by_name(version, damaged):
    copy, missing, truncated = damaged
    config = LoaderConfig(workers=1)
    run = dict(batch_size=2)
    advice = "run `msls verify` and re-run `msls prepare`"
    with pytest.raises(ValueError, match=rf"{missing}: shard is missing; {advice}"):
        StreamingBatches(copy, "train", config, **run, in_process=True)
    with pytest.raises(ValueError, match=rf"{missing}: unreadable shard .*; {advice}"):
        load_split(copy, "train", workers=1)
    shutil.copy(version.path / missing, copy.path / missing)  # only the truncated one now
    batches = StreamingBatches(copy, "train", config, **run, in_process=True)
    with pytest.raises(ValueError, match=rf"{truncated}: unreadable shard .*; {advice}"):
        epoch_of(batches)
    for read in (  # in loader worker processes: the same one line, no worker traceback
        lambda: load_split(copy, "train", workers=2),
        lambda: epoch_of(StreamingBatches(copy, "train", LoaderConfig(workers=2), batch_size=2)),
    ):
        with pytest.raises(ValueError, match=rf"{truncated}: unreadable shard") as error:
            read()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("cache", ["none", "host"])
def test_bad_shards_can_be_skipped_with_a_warning(damaged, caplog, cache):
    copy, missing, truncated = damaged
    config = LoaderConfig(workers=1, cache=cache, skip_bad_shards=True)
    run = dict(batch_size=2)
    batches = make_batches(copy, "train", config, **run)  # streamed: in a worker process
    with caplog.at_level(logging.WARNING, logger="msls.reader"):
        got = epoch_of(batches)
    assert len(got) == batches.batches_per_epoch and got[0][0].shape == (2, 3, 64, 128)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert missing in warned and truncated in warned
    if cache == "none":
        assert batches.skipped >= 2


# ---------------------------------------------------------------- configuration


def test_make_batches_picks_the_cache(version):
    assert isinstance(make_batches(version, "train", LoaderConfig(), batch_size=4), CachedBatches)
    streamed = make_batches(version, "train", LoaderConfig(cache="none"), batch_size=4)
    assert isinstance(streamed, StreamingBatches)
    with pytest.raises(DatasetError, match="do not fill one batch of 1000 per process"):
        StreamingBatches(version, "train", LoaderConfig(), batch_size=1000)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cache", "gpu", "cache must be one of"),
        ("workers", -1, "workers must be >= 0"),
        ("city_temperature", -0.5, "city_temperature must be >= 0"),
        ("city_temperature", float("nan"), "city_temperature must be >= 0"),
        ("shuffle_buffer", -1, "shuffle_buffer must be >= 0"),
    ],
)
def test_bad_config_is_one_line(field, value, message):
    with pytest.raises(ValueError, match=message) as error:
        LoaderConfig(**{field: value})
    assert "\n" not in str(error.value)


def test_unknown_split_is_refused(version):
    with pytest.raises(ValueError, match="split must be one of"):
        version.shards("test")
    assert Counter(s.split("/")[0] for s in version.shards("train")) == {
        "train": len(version.shards("train"))
    }
