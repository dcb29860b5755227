"""Cached batches: a split decoded once into host or accelerator memory.

`load_split` reads and decodes this rank's part of a split in loader processes (on CUDA
nvjpeg decodes straight into accelerator memory); `CachedBatches` draws random batches
from it by index_select on the tensors' own device, so nothing waits on a loader.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from shards.conditions import label_city
from shards.decode import as_tensor, decode_batch, decode_jpegs
from shards.loader import WORKER_START, LoaderConfig, resolved_workers
from shards.processes import exit_with
from shards.progress import track
from shards.rng import set_state
from shards.tar import read_shard
from shards.version import DatasetVersion

log = logging.getLogger("msls.reader")


class _ShardFiles(Dataset):
    """Map-style: item i = the picked samples of shard i, decoded (or their raw JPEG bytes,
    for a GPU decode), or the shard's problem as text."""

    def __init__(
        self,
        urls: list[str],
        samples: list[int],
        picks: list[slice],
        size: tuple[int, int],
        decode: bool,
        condition: str = "",
    ) -> None:
        self.urls, self.samples, self.picks = urls, samples, picks
        self.size, self.decode, self.condition = size, decode, condition

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int):
        url = self.urls[i]
        try:
            read = read_shard(url, self.samples[i], self.condition)
            samples = [(*s, url) for s in read][self.picks[i]]
            if self.decode:
                return (*decode_batch(samples, self.size), None) if samples else (None, None, None)
            # one tensor per shard: thousands of small ones would each cost a shared-memory file
            cls = torch.tensor([s[2] for s in samples], dtype=torch.int64)
            lengths = torch.tensor([len(s[1]) for s in samples], dtype=torch.int64)
            return (as_tensor(b"".join(s[1] for s in samples)), lengths), cls, None
        except ValueError as exc:  # as text: a worker's raise would carry its traceback
            return None, None, str(exc)


def load_split(
    version: DatasetVersion,
    split: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    shards: list[str] | None = None,
    workers: int = 0,
    device: str | torch.device = "cpu",
    skip_bad_shards: bool = False,
    condition: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's samples of the split's shards (or of `shards`), decoded once.

    Ranks split samples, not only shards, so every rank has data whatever the shard
    count: with the shards in a fixed shuffled order (cities mixed), rank r takes
    positions [r*q, (r+1)*q), q = samples // world_size, and reads only the shards that
    overlap them. Every rank gets q samples (fewer only where a bad shard was skipped).

    Returns uint8 [N,3,H,W] and int64 [N] labels on `device` (one rank: in shard order):
    city indices, or the classes of `condition` (shards/conditions.py). Shards
    are read (and, unless the target is CUDA, decoded) by `workers` processes (0: cores,
    at most 8); on CUDA the JPEGs are decoded by nvjpeg straight into accelerator memory.
    """
    device = torch.device(device)
    shards = version.shards(split) if shards is None else shards
    picks = rank_share([version.shard_samples(s) for s in shards], shards, rank, world_size)
    urls = [version.url(shards[i]) for i, _ in picks]
    samples = [version.shard_samples(shards[i]) for i, _ in picks]
    width, height = version.strip_size
    on_gpu = device.type == "cuda"
    target = device if on_gpu else torch.device("cpu")
    mine = sum(len(range(n)[p]) for n, (_, p) in zip(samples, picks))
    images = torch.empty((mine, 3, height, width), dtype=torch.uint8, device=target)
    cls = torch.empty(mine, dtype=torch.int64)
    picked = [p for _, p in picks]
    files = _ShardFiles(urls, samples, picked, version.strip_size, not on_gpu, condition)
    n, skipped = 0, 0
    for part, labels, problem in _parts(files, workers, split):
        if problem is not None:
            if not skip_bad_shards:
                raise ValueError(problem)
            log.warning("skipping a bad shard: %s", problem)
            skipped += 1
            continue
        if part is None:
            continue
        if on_gpu:
            data, lengths = part
            part = torch.stack(decode_jpegs(list(data.split(lengths.tolist())), device))
        images[n : n + len(labels)] = part
        cls[n : n + len(labels)] = labels
        n += len(labels)
    if skipped:
        log.warning(
            "skipped %d of %d %s shards: %d of %d samples are missing from training",
            skipped, len(urls), split, mine - n, mine,
        )  # fmt: skip
    return images[:n].to(device), cls[:n].to(device)


def rank_share(
    samples: list[int], shards: list[str], rank: int, world_size: int
) -> list[tuple[int, slice]]:
    """(shard index, slice of its samples) of rank `rank`'s equal share of the split.

    One rank: every shard whole, in order. Several: the shards in a fixed order shuffled
    by a hash of their names (so a rank's share mixes cities instead of holding a few),
    cut into `world_size` runs of sum(samples) // world_size positions.
    """
    if world_size == 1:
        return [(i, slice(None)) for i in range(len(shards))]
    order = sorted(range(len(shards)), key=lambda i: hashlib.sha1(shards[i].encode()).digest())
    share = sum(samples) // world_size
    start, stop = rank * share, (rank + 1) * share
    picks, offset = [], 0
    for i in order:
        low, high = max(start, offset), min(stop, offset + samples[i])
        if low < high:
            picks.append((i, slice(low - offset, high - offset)))
        offset += samples[i]
    return picks


def _parts(files: _ShardFiles, workers: int, split: str) -> Iterator:
    """The items of `files` in order, from `workers` loader processes (or this one)."""
    workers = min(resolved_workers(workers), len(files))
    parts = (
        iter(files[i] for i in range(len(files)))
        if workers <= 1
        else DataLoader(
            files,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4,
            multiprocessing_context=WORKER_START,
            worker_init_fn=exit_with(os.getpid()),
        )
    )
    return track(parts, len(files), f"decoding {split} shards")


def city_weights(cls: torch.Tensor, n_cities: int, temperature: float) -> torch.Tensor:
    """Per-sample weights, float [N], that make p(city) ∝ n_city ** temperature."""
    counts = torch.bincount(cls, minlength=n_cities).double()
    return counts[cls].pow(temperature - 1.0).float()


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on `device` where the backend has one (no host round trip), else CPU."""
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator()
    return generator.manual_seed(seed)


class CachedBatches:
    """Random batches of a split held in memory, drawn on the tensors' own device.

    An epoch is `N // batch_size` batches: a permutation (temperature 1: each sample once)
    or, with city balancing, as many weighted draws with replacement.
    """

    def __init__(
        self,
        images: torch.Tensor,
        cls: torch.Tensor,
        cities: int,
        config: LoaderConfig,
        *,
        batch_size: int,
        generator_seed: int = 0,
        condition: str = "",
    ) -> None:
        if len(images) != len(cls):
            raise ValueError(f"{len(images)} images but {len(cls)} labels")
        if len(images) < batch_size:
            raise ValueError(
                f"the split has {len(images)} samples here, fewer than batch_size "
                f"{batch_size}; lower --batch-size or use more data"
            )
        self.images, self.cls = images, cls.to(images.device)
        self.batch_size = batch_size
        self.batches_per_epoch = len(images) // batch_size
        self._weights = (
            None
            if config.city_temperature == 1
            else city_weights(label_city(self.cls, condition), cities, config.city_temperature)
        )
        self._generator = _generator(images.device, generator_seed)
        self.epoch, self.batch = 0, 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_state = self._generator.get_state()
        n, g = len(self.images), self._generator
        draws = self.batches_per_epoch * self.batch_size
        if self._weights is None:
            order = torch.randperm(n, generator=g, device=g.device)[:draws]
        else:
            order = torch.multinomial(self._weights.to(g.device), draws, True, generator=g)
        self._order = order.to(self.images.device)

    def __iter__(self) -> CachedBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._order[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
        batch = self.images.index_select(0, index), self.cls.index_select(0, index)
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            self._start_epoch()
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "generator": self._epoch_state}

    def load_state_dict(self, state: dict) -> bool:
        """Continue from a saved position; False where the batch order could not carry
        over (saved on another device type: re-seeded, see shards/rng.py)."""
        exact = set_state(self._generator, state["generator"])
        self.epoch, self.batch = state["epoch"], state["batch"]
        self._start_epoch()
        return exact
