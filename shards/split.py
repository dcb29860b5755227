"""Split sequences into train / val / ood: grouped, city-stratified and stable.

- Grouped: frames of one sequence are near-duplicates, so a sequence is never in two
  splits.
- Stratified: in every city the val image count is within one sequence of
  `val_fraction` of the city's images.
- Stable: adding data never moves an existing sequence.

A pure hash threshold is stable but not stratified (with a few dozen sequences a city
can be off by several); a prefix of a hash-sorted order is stratified but not stable
(a new sequence sorting early pushes an old one out). So the assignment is
incremental: the previous assignment (from the newest version built with the same
split parameters) is kept, and only new sequences are placed, in an order given by a
hash of (seed, sequence_key), each to whichever split brings its city's val count
closer to the target. With no previous assignment it is the same procedure from empty:
deterministic, independent of input order.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

SPLITS = ("train", "val", "ood")
# MSLS's own val cities and its six test cities: held out whole as out-of-distribution.
DEFAULT_HOLDOUT_CITIES = (
    "cph", "sf", "miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala",
)  # fmt: skip


@dataclass(frozen=True)
class SplitConfig:
    """Split parameters; part of the dataset version id."""

    val_fraction: float = 0.1
    seed: int = 0
    holdout_cities: tuple[str, ...] = DEFAULT_HOLDOUT_CITIES

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        object.__setattr__(self, "holdout_cities", tuple(sorted(set(self.holdout_cities))))

    def as_dict(self) -> dict:
        return {**asdict(self), "holdout_cities": list(self.holdout_cities)}


@dataclass(frozen=True)
class Sequence:
    city: str
    sequence_key: str
    n_images: int


def _order(seed: int, sequence_key: str) -> str:
    return hashlib.sha256(f"{seed}:{sequence_key}".encode()).hexdigest()


def assign_splits(
    sequences: Iterable[Sequence],
    config: SplitConfig,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """sequence_key -> split for every given sequence (see the module docstring)."""
    by_city: dict[str, list[Sequence]] = defaultdict(list)
    city_of: dict[str, str] = {}
    for seq in sequences:
        if city_of.setdefault(seq.sequence_key, seq.city) != seq.city:
            raise ValueError(
                f"sequence {seq.sequence_key} appears in {city_of[seq.sequence_key]} and {seq.city}"
            )
        by_city[seq.city].append(seq)
    previous = previous or {}
    assignment: dict[str, str] = {}
    for city, members in by_city.items():
        if city in config.holdout_cities:
            assignment.update((s.sequence_key, "ood") for s in members)
        else:
            assignment.update(_assign_city(members, config, previous))
    return assignment


def _assign_city(
    members: list[Sequence], config: SplitConfig, previous: Mapping[str, str]
) -> dict[str, str]:
    """Keep previous train/val choices; place new sequences by greedy deficit."""
    kept = {
        s.sequence_key: previous[s.sequence_key]
        for s in members
        if previous.get(s.sequence_key) in ("train", "val")
    }
    total = sum(s.n_images for s in members if s.sequence_key in kept)
    val = sum(s.n_images for s in members if kept.get(s.sequence_key) == "val")
    new = sorted(
        (s for s in members if s.sequence_key not in kept),
        key=lambda s: _order(config.seed, s.sequence_key),
    )
    assignment = dict(kept)
    for seq in new:
        total += seq.n_images
        target = config.val_fraction * total
        to_val = abs(val + seq.n_images - target) < abs(val - target)
        assignment[seq.sequence_key] = "val" if to_val else "train"
        val += seq.n_images if to_val else 0
    return assignment


def split_counts(
    sequences: Iterable[Sequence], assignment: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """city -> split -> images."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for seq in sequences:
        counts[seq.city][assignment[seq.sequence_key]] += seq.n_images
    return {city: dict(splits) for city, splits in counts.items()}
