"""Read a dataset version as training batches: a cached split, or streamed shards.

Both kinds yield `(images, cls)` forever: `images` uint8 [B,3,R,2R], the stored strips
(the trainer crops the RxR window and flips on the accelerator), `cls` int64 [B] city
indices. Both keep an exact position (`state_dict`/`load_state_dict`): the same seeds
give the same batches whether or not a run was interrupted.

The pieces, the way webdataset keeps them apart:
- shards/loader.py     `LoaderConfig` (cache, workers, city balance) and worker start-up
- shards/info.py       dataset.json, typed; shards/version.py the version directory
- shards/tar.py        the samples of one tar; shards/decode.py the one JPEG decoder
- shards/cache.py      `load_split` and `CachedBatches` (host or accelerator memory)
- shards/streaming.py  `StreamingBatches` (loader workers stream shards)
- here                 the factory: which of the two, for this rank.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from shards.cache import CachedBatches, city_weights, load_split
from shards.decode import decode_jpegs
from shards.errors import DatasetError
from shards.loader import CACHES, LoaderConfig
from shards.streaming import StreamingBatches
from shards.tar import BAD_SHARD_ADVICE, read_shard
from shards.version import DatasetVersion

__all__ = [
    "BAD_SHARD_ADVICE",
    "CACHES",
    "CachedBatches",
    "DatasetError",
    "DatasetVersion",
    "LoaderConfig",
    "StreamingBatches",
    "choose_cache",
    "city_weights",
    "decode_jpegs",
    "load_split",
    "make_batches",
    "read_shard",
]

log = logging.getLogger("msls.reader")


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
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    condition: str = "",
) -> CachedBatches | StreamingBatches:
    """This rank's endless batches of `split`, cached or streamed as `config.cache` says.

    `batch_size` and `seed` are the run's (`TrainConfig`): the seed fixes the batch order.
    `condition` is the model's (`ModelConfig.conditional`): what the labels are.
    """
    device = torch.device(device)
    version.batches_per_rank(split, batch_size, world_size)  # too small: one line, now
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
            version, split, config, batch_size=batch_size, seed=seed,
            rank=rank, world_size=world_size, device=device, condition=condition,
        )  # fmt: skip
    images, cls = load_split(
        version,
        split,
        rank=rank,
        world_size=world_size,
        workers=config.workers,
        device=device if cache == "device" else "cpu",
        skip_bad_shards=config.skip_bad_shards,
        condition=condition,
    )
    rank_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    return CachedBatches(
        images, cls, len(version.cities), config, batch_size=batch_size,
        generator_seed=rank_seed, condition=condition,
    )  # fmt: skip
