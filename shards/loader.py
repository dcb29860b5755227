"""How a split becomes batches (`LoaderConfig`), and how loader workers start.

The batch size and the seed are not here: they belong to the run (`TrainConfig`) and
are passed to `shards.reader.make_batches` with it.
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass

from shards.options import option
from shards.parallel import cpu_count

# Loader workers start from a clean server process, never by forking this one: training
# runs inside Prefect flows, whose threads and event loop do not survive a fork.
WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
if WORKER_START == "forkserver":  # torch, the readers and the JPEG decoder, once, in the server
    multiprocessing.set_forkserver_preload(["shards.reader", "torchvision.io"])

CACHES = ("auto", "none", "host", "device")
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class LoaderConfig:
    """How a split becomes batches. Recorded with the run."""

    cache: str = option("auto", "none streams shards; host decodes the split once into RAM; "
                        "device into accelerator memory; auto: device where it fits.",
                        choices=CACHES)  # fmt: skip
    workers: int = option(0, "Loader processes (and streams); 0 = one per core, at most 8.")
    city_temperature: float = option(1.0, "p(city) ∝ n_city ** T: 1 natural, 0 city-balanced.")
    shuffle_buffer: int = option(2000, "Streaming shuffle buffer, samples per stream.")
    skip_bad_shards: bool = option(False, "A missing or corrupt shard: skip it with a warning "
                                   "(else stop).")  # fmt: skip

    def __post_init__(self) -> None:
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = auto), got {self.workers}")
        if not (math.isfinite(self.city_temperature) and self.city_temperature >= 0):
            raise ValueError(f"city_temperature must be >= 0, got {self.city_temperature}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")

    def resolved_workers(self) -> int:
        return resolved_workers(self.workers)


def resolved_workers(workers: int) -> int:
    """`workers`, or with 0 the cores, at most `MAX_AUTO_WORKERS`."""
    return workers or min(cpu_count(), MAX_AUTO_WORKERS)
