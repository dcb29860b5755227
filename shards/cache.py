"""Cached batches: a split decoded once into host or accelerator memory.

`load_split` reads and decodes this rank's part of a split in loader processes (on CUDA
nvjpeg decodes straight into accelerator memory); `CachedBatches` draws random batches
from it by index_select on the tensors' own device, so nothing waits on a loader.
"""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import DataLoader, Dataset

from shards.decode import as_tensor, decode_batch, decode_jpegs
from shards.loader import WORKER_START, LoaderConfig, resolved_workers
from shards.processes import exit_with
from shards.progress import track
from shards.tar import read_shard
from shards.version import DatasetVersion

log = logging.getLogger("msls.reader")


class _ShardFiles(Dataset):
    """Map-style: item i = the decoded shard i (or its raw JPEG bytes, for a GPU decode)."""

    def __init__(self, urls: list[str], samples: list[int], size: tuple[int, int], decode: bool):
        self.urls, self.samples, self.size, self.decode = urls, samples, size, decode

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int):
        url = self.urls[i]
        try:
            samples = [(*s, url) for s in read_shard(url, self.samples[i])]
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
    workers: int = 0,
    device: str | torch.device = "cpu",
    skip_bad_shards: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shards (`shards[rank::world_size]`) decoded once, in shard order.

    Returns uint8 [N,3,H,W] and int64 [N] on `device`. Shards are read (and, unless the
    target is CUDA, decoded) by `workers` processes (0: cores, at most 8); on CUDA the
    JPEGs are decoded by nvjpeg straight into accelerator memory.
    """
    device = torch.device(device)
    shards = version.shards(split)[rank::world_size]
    urls = [version.url(s) for s in shards]
    samples = [version.shard_samples(s) for s in shards]
    width, height = version.strip_size
    on_gpu = device.type == "cuda"
    target = device if on_gpu else torch.device("cpu")
    images = torch.empty((sum(samples), 3, height, width), dtype=torch.uint8, device=target)
    cls = torch.empty(sum(samples), dtype=torch.int64)
    files = _ShardFiles(urls, samples, version.strip_size, decode=not on_gpu)
    workers = min(resolved_workers(workers), len(urls))
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
    n, skipped = 0, 0
    for part, labels, problem in track(parts, len(urls), f"decoding {split} shards"):
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
            skipped, len(urls), split, sum(samples) - n, sum(samples),
        )  # fmt: skip
    return images[:n].to(device), cls[:n].to(device)


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
            else city_weights(self.cls, cities, config.city_temperature)
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

    def load_state_dict(self, state: dict) -> None:
        self._generator.set_state(state["generator"])
        self.epoch, self.batch = state["epoch"], state["batch"]
        self._start_epoch()
