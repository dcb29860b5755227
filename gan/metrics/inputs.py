"""What every metric is a function of: the evaluation's one option and the shared inputs.

As stylegan2-ada's `metric_utils.MetricOptions`, but typed. Real images arrive as the
stored 2:1 strips; each metric takes from them what it needs: the windows training
draws (`real_windows`) or the centre window (what a person is shown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan.images import training_windows
from shards.options import option

SPLIT_SALT = {"val": 0, "train": 1}


@dataclass(frozen=True)
class EvalConfig:
    """How a checkpoint is judged (docs/EVALUATION.md). Metric names carry `samples`:
    2048 generated images make `swd2k_valwin`, 1024 `swd1k_valwin`."""

    samples: int = option(
        2048,
        "Generated images to judge, and real windows per set in SWD; compare runs only "
        "at one count (the metric names carry it: 2048 -> swd2k_valwin).",
        name="eval_samples",
    )
    inception_weights: str | None = option(
        None, "Local torch-fidelity InceptionV3 weights file: enables FID and KID."
    )

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 2:
            raise ValueError(f"samples must be an integer >= 2, got {self.samples!r}")


def count_label(n: int) -> str:
    """A metric name's image count: 2048 -> "2k", 50000 -> "50k", 500 -> "500"."""
    for unit in (1024, 1000):
        if n % unit == 0:
            return f"{n // unit}k"
    return str(n)


@dataclass
class EvalInputs:
    """Tensors live on the CPU; `device` is where to compute. `len(generated)` is the
    protocol's image count: every real set drawn for a comparison has that many."""

    generated: torch.Tensor  # uint8 [N, 3, R, R], from the EMA generator
    val: torch.Tensor  # uint8 [M, 3, R, W] val strips (W >= R; W = R for square images)
    train: torch.Tensor  # uint8 [T, 3, R, W] strips of a sample of the train split
    val_labels: torch.Tensor | None = None  # int64 [M] city index
    train_labels: torch.Tensor | None = None  # int64 [T] city index
    generated_labels: torch.Tensor | None = None  # int64 [N]: the city asked for (conditional)
    city_names: tuple[str, ...] = ()  # dataset.json's cities: label i is city_names[i]
    val_groups: torch.Tensor | None = None  # int64 [M] sequence id; None: probe splits by index
    discriminator: nn.Module | None = None  # the trained D, eval mode
    random_discriminator: nn.Module | None = None  # same architecture, DCGAN init
    inception_weights: Path | None = None  # a local torch-fidelity InceptionV3 state_dict
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)  # shared work between metrics

    @property
    def samples(self) -> int:
        return len(self.generated)

    def val_windows(self) -> torch.Tensor:
        """uint8 [N, 3, R, R]: the val reference (draw 0 of `real_windows`), drawn once."""
        if "val_windows" not in self.cache:
            self.cache["val_windows"] = real_windows(self.val, self.samples, "val", self.seed, 0)
        return self.cache["val_windows"]


def seeded(seed: int, *salt: int) -> torch.Generator:
    """A CPU generator for one (seed, purpose...) pair, so no two uses share a stream."""
    value = seed
    for s in salt:
        value = value * 1_000_003 + s
    return torch.Generator().manual_seed(value % (2**63))


def real_windows(strips: torch.Tensor, n: int, split: str, seed: int, draw: int) -> torch.Tensor:
    """uint8 [n, 3, R, R]: draw `draw` of n training-style windows of a split's strips."""
    stream = seeded(seed, 17, SPLIT_SALT[split], draw)
    return training_windows(strips, n, int(torch.randint(2**62, (1,), generator=stream)))


def subsample(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """At most n of `images`, a seeded subset in the original order."""
    if len(images) <= n:
        return images
    order = torch.randperm(len(images), generator=seeded(seed, 11))[:n]
    return images[order.sort().values]


def not_computed(reason: str) -> dict:
    """The result of a metric that cannot be computed: never a made-up number."""
    return {"computed": False, "reason": reason}
