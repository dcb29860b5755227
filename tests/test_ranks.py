"""Every rank gets the same number of batches whatever the shard count (#14, fault 3).

The WebDataset #188 kind: one train shard and two ranks left rank 1 nothing to read in
the cached modes. Ranks now split samples, not only shards, in every cache mode; a
dataset that is genuinely too small says so once, in one line, before a rank starts.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from shards.cache import rank_share
from shards.catalog import CatalogConfig
from shards.errors import DatasetError
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.pipeline import prepare_dataset
from shards.reader import make_batches
from shards.split import SplitConfig
from shards.streaming import StreamingBatches, split_units
from shards.version import DatasetVersion
from tests.msls_builder import MslsBuilder


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory) -> DatasetVersion:
    """case10: one city, ten 3-frame sequences, all of train in one shard."""
    root = tmp_path_factory.mktemp("one-shard")
    b = MslsBuilder()
    for s in range(10):
        b.sequence("austin", f"seq{s}", 3, seed=10 * s, size=(160, 120))
    _, path = prepare_dataset(
        b.write(root / "src"), DataLayout.at(root / "data"), SplitConfig(val_fraction=0.1),
        ShardConfig(), CatalogConfig(workers=1),
    )  # fmt: skip
    version = DatasetVersion(path)
    assert len(version.shards("train")) == 1
    return version


def batches(version: DatasetVersion, cache: str, rank: int, world_size: int, batch_size: int):
    config = LoaderConfig(cache=cache, workers=1)
    if cache == "none":  # the same streams in this process: no worker start-up
        return StreamingBatches(
            version, "train", config, batch_size=batch_size,
            rank=rank, world_size=world_size, in_process=True,
        )  # fmt: skip
    return make_batches(
        version, "train", config, batch_size=batch_size, rank=rank, world_size=world_size
    )


def fingerprints(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(i.numpy().tobytes()).hexdigest() for i in images]


@pytest.mark.parametrize("cache", ["host", "none"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_of_a_one_shard_split_share_its_samples(one_shard, cache, world_size):
    ranks = [batches(one_shard, cache, r, world_size, 4) for r in range(world_size)]
    per_epoch = {b.batches_per_epoch for b in ranks}
    assert per_epoch == {one_shard.samples("train") // (world_size * 4)}
    seen = [
        set(fingerprints(torch.cat([next(b)[0] for _ in range(b.batches_per_epoch)])))
        for b in ranks
    ]
    assert all(seen) and sum(map(len, seen)) == len(set().union(*seen))  # disjoint


def test_units_give_every_rank_its_own():
    assert split_units([30], 2) == (2, [(0, 0), (0, 1)])
    assert split_units([10, 10, 10], 2) == (1, [(0, 0), (1, 0), (2, 0)])
    parts, units = split_units([1, 100], 4)  # a one-sample shard has one part only
    assert len(units) >= 4 and (0, 1) not in units and parts == 3


def test_a_rank_reads_only_the_shards_of_its_share():
    shards = [f"train/{city}/shard-{i:06d}.tar" for city in ("a", "b") for i in range(5)]
    shares = [rank_share([10] * 10, shards, r, 4) for r in range(4)]
    assert [sum(len(range(10)[p]) for _, p in share) for share in shares] == [25] * 4
    assert all(len(share) <= 4 for share in shares)  # 25 samples: at most 4 of 10 shards
    assert all({shards[i][6] for i, _ in share} == {"a", "b"} for share in shares)  # mixed
    assert rank_share([10] * 10, shards, 0, 1) == [(i, slice(None)) for i in range(10)]


def test_too_small_for_the_ranks_is_one_line(one_shard):
    n = one_shard.samples("train")
    with pytest.raises(DatasetError, match=rf"{n} train samples across 2 processes") as error:
        make_batches(one_shard, "train", LoaderConfig(), batch_size=n, world_size=2)
    assert "lower --batch-size or --nproc" in str(error.value) and "\n" not in str(error.value)


def test_the_cli_refuses_before_any_process_starts(one_shard):
    root = one_shard.path.parent.parent
    args = ["--data-root", str(root), "train", "--nproc", "2", "--device", "cpu",
            "--steps", "2", "--batch-size", "64", "--ngf", "8", "--ndf", "8"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {one_shard.path}: {one_shard.samples('train')} train samples across 2 "
        "processes (--nproc) do not fill one batch of 64 per process; lower --batch-size "
        "or --nproc or prepare more data"
    ]
    assert not (root / "runs").exists()
