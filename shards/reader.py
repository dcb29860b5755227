"""Read a dataset version as training batches: a cached split, or streamed shards.

Both kinds yield `(images, cls)` forever: `images` uint8 [B,3,R,2R], the stored strips
(the trainer crops the RxR window and flips on the accelerator), `cls` int64 [B] city
indices. Both keep an exact position (`state_dict`/`load_state_dict`): the same seeds
give the same batches whether or not a run was interrupted.

- `CachedBatches`: the split decoded once (`load_split`) into host or accelerator memory;
  batches are index_selects on the tensor's own device, so nothing waits on a loader.
- `StreamingBatches`: for a split that does not fit. Each epoch the shard list is
  shuffled by (seed, epoch), cut by rank and then into `streams` (one per loader worker);
  a stream reads its shards, shuffles samples in a buffer, decodes and batches. The
  splitting is ours, never webdataset's defaults (DESIGN.md, "Install facts").
  Every rank yields `samples // (world_size * batch_size)` batches per epoch; a stream
  whose shards run short reads them again, reshuffled, so no rank ever waits.

JPEGs are decoded in one place, `decode_jpegs` (libjpeg-turbo on CPU, nvjpeg on CUDA).
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import random
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from shards.errors import DatasetError
from shards.options import option
from shards.parallel import cpu_count
from shards.processes import exit_with
from shards.progress import track
from shards.split import SPLITS

# Loader workers start from a clean server process, never by forking this one: training
# runs inside Prefect flows, whose threads and event loop do not survive a fork.
WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
if WORKER_START == "forkserver":  # import torch once in the server, not in every worker
    multiprocessing.set_forkserver_preload(["shards.reader"])

log = logging.getLogger("msls.reader")


CACHES = ("auto", "none", "host", "device")
MAX_AUTO_WORKERS = 8
BAD_SHARD_ADVICE = "run `msls verify` and re-run `msls prepare` to rebuild it"


@dataclass(frozen=True)
class LoaderConfig:
    """How a split becomes batches. Recorded with the run."""

    batch_size: int = 128
    cache: str = option("auto", "none streams shards; host decodes the split once into RAM; "
                        "device into accelerator memory; auto: device where it fits.",
                        choices=CACHES)  # fmt: skip
    workers: int = option(0, "Loader processes (and streams); 0 = one per core, at most 8.")
    city_temperature: float = option(1.0, "p(city) ∝ n_city ** T: 1 natural, 0 city-balanced.")
    shuffle_buffer: int = option(2000, "Streaming shuffle buffer, samples per stream.")
    seed: int = 0  # the run's seed (TrainConfig.seed), set by the job
    skip_bad_shards: bool = option(False, "A missing or corrupt shard: skip it with a warning "
                                   "(else stop).")  # fmt: skip

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = auto), got {self.workers}")
        if not (math.isfinite(self.city_temperature) and self.city_temperature >= 0):
            raise ValueError(f"city_temperature must be >= 0, got {self.city_temperature}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def resolved_workers(self) -> int:
        return self.workers or min(cpu_count(), MAX_AUTO_WORKERS)


class DatasetVersion:
    """A read-only view of one version directory (its dataset.json)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        info_path = self.path / "dataset.json"
        if not info_path.is_file():
            raise DatasetError(f"{info_path}: no dataset version here; `msls prepare` builds one")
        self.info = json.loads(info_path.read_text())
        self.version: str = self.info["version"]
        self.cities: list[str] = list(self.info["cities"])
        shard = self.info["params"]["shard"]
        self.resolution: int = shard["resolution"]
        self._samples = {s["path"]: s["samples"] for s in self.info["shards"]}

    @property
    def strip_size(self) -> tuple[int, int]:
        """(width, height) of a stored sample."""
        return self.info["params"]["shard"]["strip_aspect"] * self.resolution, self.resolution

    @property
    def sample_bytes(self) -> int:
        """Bytes of one decoded uint8 strip."""
        width, height = self.strip_size
        return 3 * width * height

    def shards(self, split: str) -> list[str]:
        """Relative paths of the split's shards, sorted."""
        _check_split(split)
        return sorted(p for p in self._samples if p.startswith(f"{split}/"))

    def shard_samples(self, shard: str) -> int:
        return self._samples[shard]

    def samples(self, split: str) -> int:
        _check_split(split)
        return sum(self.info["counts"].get(split, {}).values())

    def url(self, shard: str) -> str:
        return str(self.path / shard)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ---------------------------------------------------------------- decoding


def decode_jpegs(
    data: list[torch.Tensor], device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """JPEG bytes (uint8 [n] CPU tensors) -> RGB uint8 [3,H,W] tensors on `device`.

    The one decoder. On CUDA the whole list is decoded in one nvjpeg batch on the GPU;
    elsewhere libjpeg-turbo on this CPU core.
    """
    if not data:
        return []
    device = torch.device(device)
    with warnings.catch_warnings():  # torchvision 0.29 warns on every call (TorchCodec move)
        warnings.simplefilter("ignore", DeprecationWarning)
        if device.type == "cuda":
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        images = decode_jpeg(data, mode=ImageReadMode.RGB)
    return images if device.type == "cpu" else [i.to(device) for i in images]


def _as_tensor(data: bytes | bytearray | memoryview) -> torch.Tensor:
    """A uint8 [n] view of writable bytes (a copy of read-only ones)."""
    if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly):
        data = bytearray(data)
    return (
        torch.frombuffer(data, dtype=torch.uint8)
        if len(data)
        else torch.empty(0, dtype=torch.uint8)
    )


def read_shard(url: str, expected: int | None = None) -> Iterator[tuple[str, memoryview, int]]:
    """(key, jpg bytes, city index) of each sample of one tar, in stored order.

    Raises ValueError naming the shard when it is missing, truncated or malformed. A tar
    cut at a member boundary reads as a shorter valid tar, so the count is checked
    against `expected` (dataset.json's) when given.
    """
    count = 0
    try:
        with open(url, "rb") as stream:
            data = bytearray(os.fstat(stream.fileno()).st_size)
            stream.readinto(data)
        key, fields = None, {}
        for name, payload in _tar_members(data):
            name, _, ext = name.rpartition("/")[2].partition(".")
            if name != key:
                if key is not None:
                    count += 1
                    yield _sample(key, fields)
                key, fields = name, {}
            fields[ext] = payload
        if key is not None:
            count += 1
            yield _sample(key, fields)
        if expected is not None and count != expected:
            raise tarfile.ReadError(f"{count} samples, dataset.json says {expected}")
    except (OSError, tarfile.TarError, KeyError) as exc:
        detail = f"sample {exc.args[0]} lacks a member" if isinstance(exc, KeyError) else exc
        raise ValueError(f"{url}: unreadable shard ({detail}); {BAD_SHARD_ADVICE}") from exc


def _tar_members(data: bytearray) -> Iterator[tuple[str, memoryview]]:
    """(name, payload) of each regular file of an in-memory tar, payloads not copied.

    Our shards are plain USTAR (writer.py), which this walks ~20x faster than `tarfile`
    (its header parsing, not decoding, was most of a loader worker's time). Any other
    member type (pax headers, long GNU names) hands the archive to `tarfile`.
    """
    view, offset = memoryview(data), 0
    while offset + 512 <= len(data):
        header = data[offset : offset + 512]
        if header[:1] == b"\0":
            return  # the end-of-archive zero blocks
        if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0", b"5"):
            yield from _tarfile_members(data, offset)
            return
        size = int(header[124:136].rstrip(b" \0") or b"0", 8)
        start = offset + 512
        if start + size > len(data):
            raise tarfile.ReadError(f"{header[:100].rstrip(bytes(1)).decode()} is cut short")
        if header[156:157] != b"5":
            prefix = header[345:500].rstrip(b"\0").decode()
            name = header[:100].rstrip(b"\0").decode()
            yield (f"{prefix}/{name}" if prefix else name), view[start : start + size]
        offset = start + (size + 511) // 512 * 512
    if offset < len(data):
        raise tarfile.ReadError("the archive ends inside a header")


def _tarfile_members(data: bytearray, offset: int) -> Iterator[tuple[str, memoryview]]:
    with tarfile.open(fileobj=io.BytesIO(data[offset:]), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, memoryview(bytearray(tar.extractfile(member).read()))


def _sample(key: str, fields: dict[str, memoryview]) -> tuple[str, memoryview, int]:
    if "jpg" not in fields or "cls" not in fields:
        raise KeyError(key)
    return key, fields["jpg"], int(bytes(fields["cls"]))


def _decode_batch(
    samples: list[tuple[str, bytes, int, str]], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples (key, jpg, cls, shard) -> uint8 [n,3,H,W], int64 [n]."""
    try:
        images = decode_jpegs([_as_tensor(s[1]) for s in samples])
    except RuntimeError:
        for key, jpg, _, url in samples:  # find the culprit for the message
            try:
                decode_jpegs([_as_tensor(jpg)])
            except RuntimeError as exc:
                message = f"{url}: {key}.jpg does not decode ({exc}); {BAD_SHARD_ADVICE}"
                raise ValueError(message) from exc
        raise
    width, height = size
    for image, (key, _, _, url) in zip(images, samples):
        if image.shape != (3, height, width):
            raise ValueError(
                f"{url}: {key}.jpg is {image.shape[2]}x{image.shape[1]}, expected "
                f"{width}x{height}; {BAD_SHARD_ADVICE}"
            )
    return torch.stack(images), torch.tensor([s[2] for s in samples], dtype=torch.int64)


# ---------------------------------------------------------------- the cache


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
                return (*_decode_batch(samples, self.size), None) if samples else (None, None, None)
            # one tensor per shard: thousands of small ones would each cost a shared-memory file
            cls = torch.tensor([s[2] for s in samples], dtype=torch.int64)
            lengths = torch.tensor([len(s[1]) for s in samples], dtype=torch.int64)
            return (_as_tensor(b"".join(s[1] for s in samples)), lengths), cls, None
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
    workers = min(workers or min(cpu_count(), MAX_AUTO_WORKERS), len(urls))
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
        generator_seed: int = 0,
    ) -> None:
        if len(images) != len(cls):
            raise ValueError(f"{len(images)} images but {len(cls)} labels")
        if len(images) < config.batch_size:
            raise ValueError(
                f"the split has {len(images)} samples here, fewer than batch_size "
                f"{config.batch_size}; lower --batch-size or use more data"
            )
        self.images, self.cls = images, cls.to(images.device)
        self.batch_size = config.batch_size
        self.batches_per_epoch = len(images) // config.batch_size
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


# ---------------------------------------------------------------- streaming


@dataclass(frozen=True)
class StreamPlan:
    """Everything a loader worker needs to produce its batches; small and picklable."""

    urls: tuple[str, ...]  # the split's shards, sorted
    samples: tuple[int, ...]  # per shard
    shard_weights: tuple[float, ...]  # shard draw weights for city balancing
    rank: int
    world_size: int
    streams: int  # per rank, one per loader worker
    batch_size: int
    batches_per_epoch: int  # per rank
    shuffle_buffer: int
    seed: int
    balanced: bool  # city_temperature != 1: shards drawn with replacement by weight
    skip_bad_shards: bool
    size: tuple[int, int]  # (width, height)

    def shards(self, epoch: int) -> list[list[int]]:
        """Each stream's shard indices this epoch: one permutation cut by rank, then stream."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        mine = order[self.rank :: self.world_size].tolist() or [order[self.rank % len(order)]]
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
            held = [sum(self.samples[i] for i in s) for s in self.shards(epoch)]
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
                yield (*_decode_batch(chunk, self.size), tuple(str(b) for b in bad))

    def _samples(self, epoch: int, stream: int, seed: int) -> Iterator:
        """Endless (key, jpg, cls, url): the stream's shards, then again reshuffled.

        With city balancing, shards are drawn by weight with replacement instead.
        """
        rng = np.random.default_rng(seed)
        shuffler = random.Random(seed)
        shards = self.shards(epoch)[stream]
        failures = [0]  # bad shards in a row, across passes
        while True:
            if self.balanced:
                p = np.asarray(self.shard_weights) / sum(self.shard_weights)
                shards = rng.choice(len(self.urls), size=len(shards), p=p).tolist()
            yield from _shuffled(self._read(shards, failures), self.shuffle_buffer, shuffler)
            shards = rng.permutation(shards).tolist()

    def _read(self, shards: list[int], failures: list[int]) -> Iterator:
        """(key, jpg, cls, url) of each sample of `shards`; a `_BadShard` for one that fails."""
        for i in shards:
            url = self.urls[i]
            try:
                for sample in read_shard(url, self.samples[i]):
                    failures[0] = 0
                    yield (*sample, url)
            except ValueError as exc:
                if not self.skip_bad_shards:
                    raise
                yield _BadShard(exc)
                failures[0] += 1
                if failures[0] > 4 * len(self.urls):
                    raise ValueError(f"{url}: no readable shard left; {BAD_SHARD_ADVICE}") from exc


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
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        in_process: bool = False,
    ) -> None:
        shards = version.shards(split)
        total = version.samples(split)
        if not shards:
            raise DatasetError(f"{version.path}: no {split} shards in this dataset version")
        if not config.skip_bad_shards:
            for shard in shards:
                if not Path(version.url(shard)).is_file():
                    raise ValueError(f"{version.url(shard)}: shard is missing; {BAD_SHARD_ADVICE}")
        batches = total // (world_size * config.batch_size)
        if batches < 1:
            raise ValueError(
                f"{version.path}: {total} {split} samples are fewer than world_size x batch_size "
                f"({world_size} x {config.batch_size}); lower --batch-size"
            )
        counts = version.info["counts"][split]
        samples = [version.shard_samples(s) for s in shards]
        t = config.city_temperature
        self.plan = StreamPlan(
            urls=tuple(version.url(s) for s in shards),
            samples=tuple(samples),
            # p(shard) = its share of its city x p(city) ∝ n_city ** T
            shard_weights=tuple(
                n * counts[s.split("/")[1]] ** (t - 1) for s, n in zip(shards, samples)
            ),
            rank=rank,
            world_size=world_size,
            streams=max(1, min(config.resolved_workers(), len(shards) // world_size)),
            batch_size=config.batch_size,
            batches_per_epoch=batches,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            balanced=t != 1,
            skip_bad_shards=config.skip_bad_shards,
            size=version.strip_size,
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

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position: the next batch is the one an uninterrupted run
        would have yielded (given the same config, world size and worker count)."""
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

    def close(self) -> None:
        """Stop the loader workers (a new iteration starts them again)."""
        self._batches = None
        self._loader = None


def choose_cache(
    version: DatasetVersion, split: str, cache: str, device: torch.device, world_size: int = 1
) -> str:
    """Resolve cache="auto": the device if the split's uint8 strips fit in half its free
    memory, else host RAM if they fit in a quarter of it, else stream."""
    if cache != "auto":
        return cache
    need = version.samples(split) * version.sample_bytes / world_size
    if device.type in ("cuda", "hpu") and need <= _free_accelerator_memory(device) / 2:
        return "device"
    # ranks on one host each hold their part: count them all against this host's RAM
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "host" if need * local_ranks <= ram / 4 else "none"


def _free_accelerator_memory(device: torch.device) -> int:
    try:
        backend = getattr(torch, device.type)
        return int(backend.mem_get_info(device)[0])
    except (AttributeError, RuntimeError):  # no such backend here, or no way to ask it
        return 0


def make_batches(
    version: DatasetVersion,
    split: str,
    config: LoaderConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
) -> CachedBatches | StreamingBatches:
    """This rank's endless batches of `split`, cached or streamed as `config.cache` says."""
    device = torch.device(device)
    cache = choose_cache(version, split, config.cache, device, world_size)
    log.info(
        "%s split of %s: %d samples, cache=%s",
        split,
        version.version,
        version.samples(split),
        cache,
    )
    if cache == "none":
        return StreamingBatches(
            version, split, config, rank=rank, world_size=world_size, device=device
        )
    images, cls = load_split(
        version,
        split,
        rank=rank,
        world_size=world_size,
        workers=config.workers,
        device=device if cache == "device" else "cpu",
        skip_bad_shards=config.skip_bad_shards,
    )
    seed = int(np.random.SeedSequence([config.seed, rank]).generate_state(1)[0])
    return CachedBatches(images, cls, len(version.cities), config, generator_seed=seed)
