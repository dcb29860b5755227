"""What a conditional model is conditioned on, and how a sample's metadata becomes its label.

A condition is a class: a position in the model's vocabulary of class names (saved with
the checkpoint, so a checkpoint samples correctly on its own).
- "city": the dataset's cities in dataset.json order; a sample's label is its `.cls`.
- "city,night": each city by day and by night, interleaved
  ("austin", "austin night", "bangkok", ...); a sample's label is 2 * city + night,
  night being MSLS's `night` flag in the sample's `.json`.

The loaders read the night flag only for "city,night", so the other conditions cost
nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

CONDITIONS = ("", "city", "city,night")
NIGHT = " night"  # suffix of a night class's name


def with_night(condition: str) -> bool:
    """Whether labels under `condition` carry the night flag."""
    return condition.endswith(",night")


def condition_classes(cities: Sequence[str], condition: str) -> tuple[str, ...]:
    """The class names of `condition` over `cities` (dataset.json order); () for none."""
    if not condition:
        return ()
    if with_night(condition):
        return tuple(name for city in cities for name in (city, city + NIGHT))
    return tuple(cities)


def class_label(city, night, condition: str):
    """A sample's label: its city index, or 2 * city + night under "city,night". Ints
    and bools, or int64 and bool tensors of one shape."""
    return 2 * city + night if with_night(condition) else city


def untrained_classes(classes: Sequence[str], manifest: Path, condition: str) -> tuple[str, ...]:
    """The classes no train image of a version's manifest.parquet belongs to: a city held
    out whole (`--holdout-cities`), or a city never photographed at night. G's embedding
    of such a class never moved from its start, so sampling it is refused."""
    import pyarrow.parquet as pq  # here: the served model imports this module without it

    if not classes or not manifest.is_file():
        return ()
    rows = pq.read_table(
        manifest, columns=["city_index", "night"], filters=[("split", "==", "train")]
    ).to_pydict()
    seen = {class_label(c, bool(n), condition) for c, n in zip(rows["city_index"], rows["night"])}
    return tuple(name for i, name in enumerate(classes) if i not in seen)


def label_city(labels: torch.Tensor, condition: str) -> torch.Tensor:
    """int64 [N] city indices of int64 [N] labels under `condition`."""
    return labels // 2 if with_night(condition) else labels


def class_cities(classes: Sequence[str]) -> tuple[str, ...]:
    """The city names of a vocabulary, in order, without their night variants."""
    return tuple(dict.fromkeys(name.removesuffix(NIGHT) for name in classes))


def class_index(
    classes: Sequence[str], city: str, night: bool = False, untrained: Sequence[str] = ()
) -> int:
    """The label of `city` (by night if `night`) in a vocabulary; ValueError, one line,
    for a name it lacks (listing the known cities), a night it is not conditioned on, or
    a class among `untrained` (no train images: its embedding never learned)."""
    if city not in classes:
        known = ", ".join(class_cities(classes))
        raise ValueError(f"unknown city {city!r}; this checkpoint knows: {known}")
    name = city + NIGHT if night else city
    if name not in classes:
        raise ValueError(
            "this checkpoint is not conditioned on night; train with --conditional "
            "city,night to sample night frames"
        )
    if name in untrained:
        learned = ", ".join(c for c in class_cities(classes) if c not in untrained)
        raise ValueError(
            f"{name!r} had no train images (held out), so G never learned it; "
            f"choose one of: {learned}"
        )
    return classes.index(name)
