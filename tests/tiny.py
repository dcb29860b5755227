"""A tiny real dataset version and a tiny training job, shared by the training-side tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gan.loop import LoopConfig
from gan.models import ModelConfig
from gan.trainer import TrainConfig
from shards.catalog import CatalogConfig
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.pipeline import prepare_dataset
from shards.split import SplitConfig
from tasks.train import TrainJob
from tests.msls_builder import MslsBuilder

TINY_MODEL = ModelConfig(nz=16, ngf=8, ndf=8)
# The EMA G's BatchNorm statistics from 2 batches before each checkpoint, not the default
# 64: the tests check what is written, not how good the statistics are, and 64 made the
# tiny job's checkpoints cost more than its training (a 4-step run: 1.5 s against 0.4 s).
TINY_TRAIN = TrainConfig(batch_size=8, ema_bn_batches=2)
# The same tiny run as options (names as in `msls train --help`): for flows and the CLI.
TINY_RUN = {
    "device": "cpu",
    "steps": 4,
    "minutes": 0.0,
    "nz": 16,
    "ngf": 8,
    "ndf": 8,
    "batch_size": 8,
    "ema_bn_batches": 2,
    "log_every": 2,
    "sample_every": 2,
    "cache": "host",
    "workers": 1,
    "eval_samples": 32,
}


def build_dataset(root: Path, night_every: int = 0, holdout: tuple[str, ...] = ()) -> Path:
    """Three cities x six sequences x three frames, sharded; returns the data root.
    With `night_every` k, every k-th sequence of each city is taken at night; `holdout`
    cities are held out whole (their own split, no train images)."""
    b = MslsBuilder()
    for city in ("austin", "paris", "tokyo"):
        for s in range(6):
            night = bool(night_every) and s % night_every == 0
            b.sequence(city, f"{city}{s}", 3, seed=s, size=(160, 120), night=night)
    layout = DataLayout.at(root / "data")
    prepare_dataset(
        b.write(root / "src"),
        layout,
        SplitConfig(val_fraction=0.2, holdout_cities=holdout),
        ShardConfig(shard_size=6),
        CatalogConfig(workers=1),
    )
    return layout.root


def tiny_job(data_root: Path, **overrides) -> TrainJob:
    """4 CPU steps of a width-8 DCGAN, logging and checkpointing every 2."""
    base = TrainJob(
        data_root=str(data_root),
        device="cpu",
        steps=4,
        model=TINY_MODEL,
        train=TINY_TRAIN,
        loader=LoaderConfig(cache="host", workers=1),  # one decoding worker: quick start-up
        loop=LoopConfig(log_every=2, checkpoint_every=2),
    )
    return replace(base, **overrides)
