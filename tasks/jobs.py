"""The jobs users run, each a tree of the step configs: every option is defined once.

A job nests the configs of the steps it runs (`TrainJob.train` is a `TrainConfig`,
`PrepareJob.split` a `SplitConfig`, ...) and adds its own few options. The fields
declared with `shards.options.option` are what users set; `flows/options.py` derives
the CLI flags and the Prefect flow parameters from them, and `to_dict` is what
options.json and MLflow record. Rules between options live in each job's
`__post_init__`, the one place they are checked.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gan.accelerators import DEVICES, check_device
from gan.loop import Budget, LoopConfig
from gan.metrics import EvalConfig
from gan.models import ModelConfig
from gan.trainer import TrainConfig
from shards.imaging import ShardConfig
from shards.loader import LoaderConfig
from shards.lock import DEFAULT_LOCK_TIMEOUT
from shards.options import from_dict, option
from shards.publish import check_url
from shards.retention import check_keep
from shards.split import SplitConfig
from shards.synthetic import ALL_TRAIN_VAL_CITIES, TEST_CITIES, SyntheticConfig
from tasks.presets import BUDGET, with_preset


@dataclass(frozen=True)
class PrepareJob:
    """Source -> catalog -> split -> shards: the options that build a dataset version.

    The split, shard and synthetic configs are the version's parameters (its id hashes
    them and dataset.json records them); the rest says where from and how.
    """

    source: str = option("synthetic", "synthetic, a folder of MSLS zips, or a links file.")
    dask: str = option("", "Shard on Dask: local, or a scheduler address tcp://host:port.")
    publish: str = option("", "Upload the version to an fsspec URL (s3://bucket/msls, ...).")
    lock_timeout: float = option(
        DEFAULT_LOCK_TIMEOUT, "Seconds to wait for another prepare on this data root."
    )
    split: SplitConfig = field(default_factory=SplitConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    data_root: str = ""  # "" = $MSLS_DATA, else ./data

    def __post_init__(self) -> None:
        _check_msls_cities(self.split.holdout_cities)
        if self.dask and self.dask != "local" and not re.match(_SCHEDULER, self.dask):
            raise ValueError(
                f"dask must be '', 'local' or a scheduler address like tcp://host:8786, "
                f"got {self.dask!r}"
            )
        if self.publish:
            check_url(self.publish)


_SCHEDULER = r"^(tcp|tls|inproc|ucx)://[^/\s]+$"


@dataclass(frozen=True)
class ReshardJob(PrepareJob):
    """A prepare that also prunes: the scheduled msls-reshard deployment."""

    keep: int = option(3, "Dataset versions to keep (LATEST and leased ones are never pruned).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_keep(self.keep)


def _check_msls_cities(cities: tuple[str, ...]) -> None:
    """A misspelt held-out city would silently hold out nothing: refuse it up front."""
    known = (*ALL_TRAIN_VAL_CITIES, *TEST_CITIES)
    unknown = [c for c in cities if c not in known]
    if unknown:
        raise ValueError(
            f"holdout_cities: unknown city {unknown[0]!r}; MSLS cities are {', '.join(known)}"
        )


@dataclass(frozen=True)
class TrainJob:
    """One training run: what to train on, where, for how long, with which configs."""

    dataset: str = option("latest", "Dataset version id, or latest.")
    device: str = option("auto", "Accelerator for training, renders and evaluation.",
                         choices=DEVICES)  # fmt: skip
    steps: int = option(0, "Generator steps to train for (0: use epochs or minutes).")
    epochs: float = option(0.0, "Passes over the train split (0: use steps or minutes).")
    minutes: float = option(0.0, "Wall-clock budget of training (0: use steps or epochs).")
    nproc: int = option(1, "Processes (devices) via torchrun.")
    resume: str = option("", "A run name or checkpoint.pt to continue.")
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data_root: str = ""  # "" = $MSLS_DATA, else ./data
    run: str = ""  # run directory name under data/runs (default: time + dataset version)

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"nproc must be >= 1, got {self.nproc}")
        for name in ("steps", "epochs", "minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_device(self.device)
        if not (self.steps or self.epochs or self.minutes or self.resume):
            raise ValueError("give --steps, --epochs or --minutes")
        # WGAN-GP's penalty is per sample: its critic must not mix samples in BatchNorm.
        if self.train.loss == "wgan-gp" and self.model.d_norm == "batch":
            object.__setattr__(self, "model", replace(self.model, d_norm="layer"))

    def budget(self, train_samples: int, world_size: int, step: int) -> Budget:
        """When to stop: total steps to reach (counting from step 0), or minutes from now.

        Epochs become steps over `train_samples` images at `world_size` processes; a
        resume must ask for more steps than its checkpoint's `step` (ValueError).
        """
        steps = self.steps
        if self.epochs:
            per_step = self.train.batch_size * self.train.critic_steps * world_size
            steps = math.ceil(self.epochs * train_samples / per_step)
        if self.resume and steps and steps <= step:
            raise ValueError(f"the checkpoint is at step {step}; ask for more steps than that")
        return Budget(steps=steps, minutes=self.minutes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        """Inverse of `to_dict`; unknown keys are rejected, not silently dropped."""
        return from_dict(cls, data)


@dataclass(frozen=True)
class PipelineJob:
    """What the msls-train flow runs: prepare (when `source` is given), train, judge.

    The flows build it through a preset; built bare, it trains for the cpu preset's budget.
    """

    prepare: PrepareJob = field(default_factory=PrepareJob)
    job: TrainJob = field(default_factory=lambda: TrainJob(**with_preset("cpu", {}, set(BUDGET))))
    evaluation: EvalConfig = field(default_factory=EvalConfig)
