"""Streamed batches: for a split that does not fit in memory.

Each epoch the shard list is shuffled by (seed, epoch), cut by rank and then into
`streams` (one per loader worker); a stream reads its shards, shuffles samples in a
buffer, decodes and batches. The splitting is ours, never webdataset's defaults
(DESIGN.md, "Install facts"). Every rank yields `samples // (world_size * batch_size)`
batches per epoch; a stream whose shards run short reads them again, reshuffled, so no
rank ever waits.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.decode import decode_batch
from shards.loader import WORKER_START, LoaderConfig
from shards.processes import exit_with
from shards.tar import BAD_SHARD_ADVICE, read_shard
from shards.version import DatasetVersion

log = logging.getLogger("msls.reader")


@dataclass(frozen=True)
class StreamPlan:
    """Everything a loader worker needs to produce its batches; small and picklable."""

    urls: tuple[str, ...]  # the split's shards, sorted
    samples: tuple[int, ...]  # per shard
    # The units streams read: (shard, part), part q of a shard being its samples q, q +
    # parts, ...; parts > 1 where there are too few shards to give every rank its own.
    units: tuple[tuple[int, int], ...]
    unit_samples: tuple[int, ...]
    unit_weights: tuple[float, ...]  # draw weights for city balancing
    parts: int
    rank: int
    world_size: int
    streams: int  # per rank, one per loader worker
    batch_size: int
    batches_per_epoch: int  # per rank
    shuffle_buffer: int
    seed: int
    balanced: bool  # city_temperature != 1: units drawn with replacement by weight
    skip_bad_shards: bool
    size: tuple[int, int]  # (width, height)
    condition: str = ""  # what a label is (shards/conditions.py): "" and city: the city

    def shards(self, epoch: int) -> list[list[int]]:
        """Each stream's unit indices this epoch: one permutation cut by rank, then stream."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        mine = order[self.rank :: self.world_size].tolist()
        return [mine[k :: self.streams] for k in range(self.streams)]

    def quotas(self, epoch: int) -> list[int]:
        """Batches each stream makes this epoch, summing to the rank's count.

        As many whole batches as a stream's shards hold, then the rest to the streams with
        the most samples left over: a sample repeats within an epoch only when the rank's
        shards hold fewer samples than its batches need (or, city-balanced, by design).
        """
        if self.balanced:
            held = [self.batches_per_epoch * self.batch_size] * self.streams
        else:
            held = [sum(self.unit_samples[u] for u in s) for s in self.shards(epoch)]
        quotas = [h // self.batch_size for h in held]
        while sum(quotas) > self.batches_per_epoch:
            quotas[quotas.index(max(quotas))] -= 1
        while sum(quotas) < self.batches_per_epoch:
            left = [h - q * self.batch_size for h, q in zip(held, quotas)]
            quotas[left.index(max(left))] += 1
        return quotas

    def order(self, epoch: int) -> list[int]:
        """The stream that makes each batch of the epoch: round robin over streams with
        batches left, which is the order a torch DataLoader takes from its workers."""
        left, order = self.quotas(epoch), []
        while len(order) < self.batches_per_epoch:
            for k in range(self.streams):
                if left[k]:
                    order.append(k)
                    left[k] -= 1
        return order

    def batches(
        self, epoch: int, stream: int, skip: int, count: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]]:
        """Batches `skip` to `skip + count` of one stream's epoch, and the bad shards met.

        Skipped batches are read and shuffled but not decoded, so a resume is quick.
        """
        seed = np.random.SeedSequence([self.seed, epoch, self.rank, stream]).generate_state(1)
        samples = self._samples(epoch, stream, int(seed[0]))
        for i in range(skip + count):
            chunk, bad = [], []
            while len(chunk) < self.batch_size:
                sample = next(samples)
                (bad if isinstance(sample, _BadShard) else chunk).append(sample)
            if i >= skip:
                yield (*decode_batch(chunk, self.size), tuple(str(b) for b in bad))

    def _samples(self, epoch: int, stream: int, seed: int) -> Iterator:
        """Endless (key, jpg, cls, url): the stream's units, then again reshuffled.

        With city balancing, units are drawn by weight with replacement instead.
        """
        rng = np.random.default_rng(seed)
        shuffler = random.Random(seed)
        units = self.shards(epoch)[stream]
        failures = [0]  # bad shards in a row, across passes
        while True:
            if self.balanced:
                p = np.asarray(self.unit_weights) / sum(self.unit_weights)
                units = rng.choice(len(self.units), size=len(units), p=p).tolist()
            yield from _shuffled(self._read(units, failures), self.shuffle_buffer, shuffler)
            units = rng.permutation(units).tolist()

    def _read(self, units: list[int], failures: list[int]) -> Iterator:
        """(key, jpg, cls, url) of each sample of `units`; a `_BadShard` for one that fails."""
        for unit in units:
            i, part = self.units[unit]
            url = self.urls[i]
            try:
                for j, sample in enumerate(read_shard(url, self.samples[i], self.condition)):
                    failures[0] = 0
                    if j % self.parts == part:
                        yield (*sample, url)
            except ValueError as exc:
                if not self.skip_bad_shards:
                    raise
                yield _BadShard(exc)
                failures[0] += 1
                if failures[0] > 4 * len(self.units):
                    raise ValueError(f"{url}: no readable shard left; {BAD_SHARD_ADVICE}") from exc


def split_units(samples: list[int], world_size: int) -> tuple[int, list[tuple[int, int]]]:
    """(parts, units): each shard read as `parts` interleaved parts, the fewest that give
    every rank a unit of its own; units with no sample are left out.

    With at least as many shards as ranks a unit is a whole shard (parts = 1); one shard
    and two ranks gives each rank half of its samples (WebDataset #188: a rank with no
    shard had nothing to read). Needs sum(samples) >= world_size.
    """
    parts = max(1, math.ceil(world_size / len(samples)))
    while True:
        units = [(i, q) for i, n in enumerate(samples) for q in range(min(parts, n))]
        if len(units) >= world_size:
            return parts, units
        parts += 1


class _BadShard(str):
    """Travels in the sample stream in place of a shard that failed; the text says why."""


def _shuffled(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of `size` over one pass (bad-shard markers pass straight through)."""
    buffer: list = []
    for sample in samples:
        if size <= 1 or isinstance(sample, _BadShard):
            yield sample
        elif len(buffer) < size:
            buffer.append(sample)
        else:
            i = rng.randrange(size)
            yield buffer[i]
            buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


class _Streams(IterableDataset):
    """The epochs of one rank's streams. In a loader worker: that worker's stream; in the
    main process: all streams, round robin, which is the same batch order."""

    def __init__(self, plan: StreamPlan, epoch: int, batch: int) -> None:
        self.plan, self.start_epoch, self.start_batch = plan, epoch, batch
        self._epoch = epoch  # each copy (one per worker) counts the epochs it has begun

    def __iter__(self):
        epoch, self._epoch = self._epoch, self._epoch + 1
        done = self.start_batch if epoch == self.start_epoch else 0
        order = self.plan.order(epoch)
        quotas = self.plan.quotas(epoch)

        def skip(k: int) -> int:
            return order[:done].count(k)

        worker = get_worker_info()
        if worker is None:
            streams = [
                self.plan.batches(epoch, k, skip(k), quotas[k] - skip(k))
                for k in range(self.plan.streams)
            ]
            return (next(streams[k]) for k in order[done:])
        # the DataLoader asks worker 0 first: on a resumed epoch worker 0 must be the
        # stream that makes the next batch, and the rest follow in the same cycle
        first = order[done] if done < len(order) else 0
        k = (worker.id + first) % self.plan.streams
        return _reported(self.plan.batches(epoch, k, skip(k), quotas[k] - skip(k)))


class _Failure(str):
    """A loader worker's ValueError, sent as text: raised there, it would carry a traceback."""


def _reported(batches: Iterator) -> Iterator:
    try:
        yield from batches
    except ValueError as exc:
        yield _Failure(exc)


class StreamingBatches:
    """Batches streamed from a split's shards by loader workers, for data that does not fit.

    Each epoch every rank yields `samples(split) // (world_size * batch_size)` batches.
    `in_process=True` runs the same streams in this process (the same batches, in the
    same order): for tests, benchmarks and debugging.
    """

    def __init__(
        self,
        version: DatasetVersion,
        split: str,
        config: LoaderConfig,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        in_process: bool = False,
        condition: str = "",
    ) -> None:
        shards = version.shards(split)
        if not config.skip_bad_shards:
            for shard in shards:
                if not Path(version.url(shard)).is_file():
                    raise ValueError(f"{version.url(shard)}: shard is missing; {BAD_SHARD_ADVICE}")
        batches = version.batches_per_rank(split, batch_size, world_size)
        samples = [version.shard_samples(s) for s in shards]
        parts, units = split_units(samples, world_size)
        unit_samples = [len(range(q, samples[i], parts)) for i, q in units]
        counts, t = version.info.counts[split], config.city_temperature
        self.plan = StreamPlan(
            urls=tuple(version.url(s) for s in shards),
            samples=tuple(samples),
            units=tuple(units),
            unit_samples=tuple(unit_samples),
            # p(unit) = its share of its city x p(city) ∝ n_city ** T
            unit_weights=tuple(
                n * counts[shards[i].split("/")[1]] ** (t - 1)
                for (i, _), n in zip(units, unit_samples)
            ),
            parts=parts,
            rank=rank,
            world_size=world_size,
            streams=max(1, min(config.resolved_workers(), len(units) // world_size)),
            batch_size=batch_size,
            batches_per_epoch=batches,
            shuffle_buffer=config.shuffle_buffer,
            seed=seed,
            balanced=t != 1,
            skip_bad_shards=config.skip_bad_shards,
            size=version.strip_size,
            condition=condition,
        )
        self.device = torch.device(device)
        self.in_process = in_process
        self.batches_per_epoch = batches
        self.epoch, self.batch = 0, 0
        self.skipped = 0  # bad shards met (each time one is met)
        self._loader: DataLoader | _Streams | None = None
        self._batches: Iterator | None = None

    def __iter__(self) -> StreamingBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._loader is None:
            self._loader = self._make_loader()
        if self._batches is None:
            self._batches = iter(self._loader)
        item = next(self._batches, None)
        if item is None:  # the epoch's stream ended: the loader starts the next one
            self._batches = iter(self._loader)
            item = next(self._batches)
        if isinstance(item, _Failure):
            self.close()
            raise ValueError(str(item))
        images, cls, bad = item
        for problem in bad:
            self.skipped += 1
            log.warning("skipping a bad shard: %s", problem)
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return images, cls

    def _make_loader(self) -> DataLoader | _Streams:
        streams = _Streams(self.plan, self.epoch, self.batch)
        if self.in_process:
            return streams
        return DataLoader(
            streams,
            batch_size=None,  # the workers batch: uint8 collation is a cheap stack there
            num_workers=self.plan.streams,
            pin_memory=self.device.type == "cuda",
            persistent_workers=True,
            prefetch_factor=4,
            multiprocessing_context=WORKER_START,
            worker_init_fn=exit_with(os.getpid()),
        )

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "streams": self.plan.streams}

    def load_state_dict(self, state: dict) -> bool:
        """Continue from a saved position: the next batch is the one an uninterrupted run
        would have yielded (given the same config, world size and worker count). True:
        the position is plain numbers, valid on any device."""
        if state.get("streams", self.plan.streams) != self.plan.streams:
            log.warning(
                "resuming with %d loader streams where the run had %d: the data order "
                "from here differs from an uninterrupted run (set --workers to match)",
                self.plan.streams,
                state["streams"],
            )
        if not 0 <= state["batch"] < self.batches_per_epoch:
            raise ValueError(
                f"saved position batch {state['batch']} is outside an epoch of "
                f"{self.batches_per_epoch} batches; was the run made with another batch size?"
            )
        self.close()
        self.epoch, self.batch = state["epoch"], state["batch"]
        return True

    def close(self) -> None:
        """Stop the loader workers (a new iteration starts them again)."""
        self._batches = None
        self._loader = None
