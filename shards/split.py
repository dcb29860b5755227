"""Split sequences into train / val / ood: grouped, city-stratified and stable.

- Grouped: frames of one sequence are near-duplicates, so a sequence is never in two
  splits (val would otherwise measure memorisation).
- Stratified: in every city the val image count is within one sequence of
  `val_fraction` of the city's images (the greedy below keeps it within half of the
  city's largest sequence).
- Stable: adding data never moves an existing sequence, so a model trained on an older
  version never sees a newer version's val images as "new".
- Held out: whole cities (by default MSLS's own val and test cities) go to `ood`.

A pure hash threshold is stable but not stratified (with a few dozen sequences a city
can be off by several); a prefix of a hash-sorted order is stratified but not stable
(a new sequence sorting early pushes an old one out). So the assignment is
incremental: the previous assignment (from the newest version built with the same
split parameters) is kept, and only new sequences are placed, in an order given by a
sha256 of (seed, sequence_key), each to whichever split brings its city's val count
closer to the target (greedy deficit). With no previous assignment it is the same
procedure from empty: deterministic, independent of input order.

Why the bound holds: let d = val_fraction * city_images - val_images. Placing a
sequence of s images makes d either d + f*s (train) or d + f*s - s (val); the greedy
takes the smaller |d|, which is at most max(|d|, s / 2). From d = 0 that stays within
half the largest sequence, and adding sequences keeps it there.

Changing the hash input or the tie rule changes every fresh assignment and thus every
dataset version id: tests/test_split.py pins a small example.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shards.options import option

SPLITS = ("train", "val", "ood")
# MSLS's own val cities and its six test cities (folder names as in mapillary_sls's
# `default_cities`): held out whole as out-of-distribution.
DEFAULT_HOLDOUT_CITIES = (
    "cph", "sf", "miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala",
)  # fmt: skip


@dataclass(frozen=True)
class SplitConfig:
    """Split parameters; part of the dataset version id and recorded in dataset.json.

    `holdout_cities` is stored sorted and deduplicated, so configs that mean the same
    compare equal (a previous assignment is only carried over when they do).
    """

    val_fraction: float = option(0.1, "Share of each city's images held out for validation.")
    seed: int = option(0, "Split seed: which sequences go to val. Part of the dataset version.",
                       name="split_seed")  # fmt: skip
    holdout_cities: tuple[str, ...] = option(
        DEFAULT_HOLDOUT_CITIES, "Cities held out whole as the out-of-distribution split."
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "val_fraction", _check_fraction(self.val_fraction))
        object.__setattr__(self, "seed", _check_seed(self.seed))
        object.__setattr__(self, "holdout_cities", _check_cities(self.holdout_cities))

    def as_dict(self) -> dict:
        """JSON-able; `SplitConfig(**config.as_dict()) == config`."""
        return {
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "holdout_cities": list(self.holdout_cities),
        }


def _check_fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {value!r}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {value}")
    return float(value)


def _check_seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {value!r}")
    return int(value)


def _check_cities(value: object) -> tuple[str, ...]:
    # A bare string would silently become a tuple of letters.
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"holdout_cities must be a list of city names, got {value!r}")
    cities = tuple(value)
    bad = [c for c in cities if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"holdout_cities must be non-empty city names, got {bad[0]!r}")
    return tuple(sorted(set(cities)))


@dataclass(frozen=True)
class Sequence:
    """One drive: `n_images` usable frames of `sequence_key` in `city`."""

    city: str
    sequence_key: str
    n_images: int

    def __post_init__(self) -> None:
        if not (isinstance(self.city, str) and self.city):
            raise ValueError(f"sequence {self.sequence_key!r}: city must be a non-empty string")
        if not (isinstance(self.sequence_key, str) and self.sequence_key):
            raise ValueError(f"sequence in {self.city}: sequence_key must be a non-empty string")
        n = self.n_images
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(
                f"sequence {self.sequence_key}: n_images must be an integer >= 0, got {n!r}"
            )


def assign_splits(
    sequences: Iterable[Sequence],
    config: SplitConfig,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """sequence_key -> split for every given sequence (see the module docstring).

    `previous` (sequence_key -> split) is kept where it still applies: entries for
    sequences no longer given are dropped, a sequence of a held-out city is always
    `ood`, and an `ood` entry of a city no longer held out is placed afresh.
    Raises ValueError for a sequence_key given twice or a split name not in SPLITS.
    """
    holdout = frozenset(config.holdout_cities)
    previous = previous or {}
    assignment: dict[str, str] = {}
    for city, members in _by_city(sequences).items():
        if city in holdout:
            assignment.update((s.sequence_key, "ood") for s in members)
        else:
            assignment.update(_assign_city(members, config, previous))
    return assignment


def _by_city(sequences: Iterable[Sequence]) -> dict[str, list[Sequence]]:
    """Group by city; a repeated key would make the result depend on input order."""
    by_city: dict[str, list[Sequence]] = defaultdict(list)
    city_of: dict[str, str] = {}
    for seq in sequences:
        seen = city_of.setdefault(seq.sequence_key, seq.city)
        if seen != seq.city:
            raise ValueError(f"sequence {seq.sequence_key} appears in {seen} and {seq.city}")
        by_city[seq.city].append(seq)
    if len(city_of) != sum(len(m) for m in by_city.values()):
        counts: dict[str, int] = defaultdict(int)
        for members in by_city.values():
            for seq in members:
                counts[seq.sequence_key] += 1
        key = min(k for k, n in counts.items() if n > 1)
        raise ValueError(f"sequence {key} is given {counts[key]} times")
    return by_city


def _assign_city(
    members: list[Sequence], config: SplitConfig, previous: Mapping[str, str]
) -> dict[str, str]:
    """Keep previous train/val choices; place new sequences by greedy deficit.

    Previous sequences count at their current size, so the greedy corrects for any
    drift (a sequence that gained or lost frames keeps its split).
    """
    assignment: dict[str, str] = {}
    new: list[Sequence] = []
    total = val = 0
    for seq in members:
        split = previous.get(seq.sequence_key)
        if split is not None and split not in SPLITS:
            raise ValueError(
                f"previous split of sequence {seq.sequence_key} is {split!r}, not one of {SPLITS}"
            )
        if split in ("train", "val"):
            assignment[seq.sequence_key] = split
            total += seq.n_images
            val += seq.n_images if split == "val" else 0
        else:
            new.append(seq)
    new.sort(key=lambda s: _order(config.seed, s.sequence_key))
    for seq in new:
        total += seq.n_images
        target = config.val_fraction * total
        to_val = abs(val + seq.n_images - target) < abs(val - target)  # ties go to train
        assignment[seq.sequence_key] = "val" if to_val else "train"
        val += seq.n_images if to_val else 0
    return assignment


def _order(seed: int, sequence_key: str) -> str:
    """Visiting order of new sequences: random-looking, reproducible, seed-dependent."""
    return hashlib.sha256(f"{seed}:{sequence_key}".encode()).hexdigest()


def split_counts(
    sequences: Iterable[Sequence], assignment: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """city -> split -> images, with every split of SPLITS present (0 where empty)."""
    counts: dict[str, dict[str, int]] = {}
    for seq in sequences:
        split = assignment.get(seq.sequence_key)
        if split not in SPLITS:
            raise ValueError(f"sequence {seq.sequence_key} has no split (got {split!r})")
        city = counts.setdefault(seq.city, dict.fromkeys(SPLITS, 0))
        city[split] += seq.n_images
    return counts
