"""A city whose every photo fails to decode (#14, fault 6: shards with zero samples).

The version is consistent about it: the city keeps its index (the .cls of the others
depend on it) with a count of 0, no empty tar is written or listed, verify agrees with
the reader, and every cache mode trains.
"""

from __future__ import annotations

import pytest
import torch

from shards.cache import load_split
from shards.catalog import CatalogConfig
from shards.imaging import ShardConfig
from shards.info import DatasetInfo
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.pipeline import prepare_dataset
from shards.reader import make_batches
from shards.split import SplitConfig
from shards.streaming import StreamingBatches
from shards.verify import verify_dataset
from shards.version import DatasetVersion
from tests.msls_builder import MslsBuilder, Row, jpeg


def headers_only(data: bytes) -> bytes:
    """A JPEG stubbed right before its scan, end marker appended (case18)."""
    return data[: data.find(b"\xff\xda")] + b"\xff\xd9"


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> DatasetVersion:
    root = tmp_path_factory.mktemp("empty-city")
    b = MslsBuilder()
    for c, city in enumerate(("austin", "berlin", "paris")):
        for s in range(6):
            for f in range(3):
                data = jpeg(160, 120, seed=100 * c + 10 * s + f)
                if city == "berlin":
                    data = headers_only(data)
                b.image(city, Row(f"{city[:3]}{s}f{f}", f"{city}{s}", f), data)
    _, path = prepare_dataset(
        b.write(root / "src"), DataLayout.at(root / "data"), SplitConfig(val_fraction=0.2),
        ShardConfig(shard_size=8), CatalogConfig(workers=1),
    )  # fmt: skip
    return DatasetVersion(path)


def test_the_city_keeps_its_index_with_a_count_of_zero(version):
    info: DatasetInfo = version.info
    assert info.cities == ["austin", "berlin", "paris"]
    assert info.counts["train"]["berlin"] == 0
    assert info.dropped == {"decode_failed": 18}
    assert not any(s.city == "berlin" for s in info.shards)
    assert all(s.samples > 0 for s in info.shards)
    assert not (version.path / "train" / "berlin").exists() or not any(
        (version.path / "train" / "berlin").iterdir()
    )


def test_verify_agrees_with_the_reader(version):
    report = verify_dataset(version.path, workers=1)
    assert report.ok, report.problems
    images, _ = load_split(version, "train", workers=1)
    assert report.samples == version.samples("train") + version.samples("val")
    assert len(images) == version.samples("train")


@pytest.mark.parametrize("cache", ["host", "none"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_every_cache_mode_trains(version, cache, temperature):
    config = LoaderConfig(cache=cache, workers=1, city_temperature=temperature)
    if cache == "none":  # in this process: the same batches, no worker start-up
        batches = StreamingBatches(version, "train", config, batch_size=4, in_process=True)
    else:
        batches = make_batches(version, "train", config, batch_size=4)
    drawn = [next(batches)[1] for _ in range(6)]
    assert all(len(cls) == 4 for cls in drawn)
    assert 1 not in torch.cat(drawn).tolist()  # berlin has nothing to give


def test_an_empty_shard_listed_by_an_older_version_is_passed_over(version, tmp_path):
    import dataclasses
    import shutil

    from shards.info import ShardEntry

    copy = tmp_path / version.path.name
    shutil.copytree(version.path, copy)
    empty = "train/berlin/shard-000000.tar"
    (copy / "train" / "berlin").mkdir(parents=True, exist_ok=True)
    (copy / empty).write_bytes(bytes(1024))  # what such a version held: an empty tar
    info = version.info
    dataclasses.replace(info, shards=[*info.shards, ShardEntry(empty, 0, 1024)]).save(copy)
    older = DatasetVersion(copy)
    assert empty not in older.shards("train")
    config = LoaderConfig(cache="none", workers=1, city_temperature=0.0)
    batches = StreamingBatches(older, "train", config, batch_size=4, in_process=True)
    assert len(next(batches)[1]) == 4
    assert verify_dataset(copy, workers=1).ok
