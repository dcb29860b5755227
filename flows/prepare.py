"""The msls-prepare flow: source -> catalog -> split -> shards -> a dataset version.

Wiring only: each step is a task in tasks/, the work is in shards/.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from shards.catalog import CatalogConfig
from shards.dataset import DatasetPlan
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.lock import DEFAULT_LOCK_TIMEOUT, prepare_lock
from shards.parallel import cpu_count
from shards.split import DEFAULT_HOLDOUT_CITIES, SplitConfig
from shards.synthetic import ALL_TRAIN_VAL_CITIES, TEST_CITIES, SyntheticConfig
from shards.writer import ShardJob
from tasks.catalog import catalog_task
from tasks.shard import finalize_task, write_shard_task
from tasks.source import acquire_source_task
from tasks.split import split_task


def prepare_configs(
    resolution: int = 64,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_size: int = 5000,
    include_panos: bool = False,
    holdout_cities: tuple[str, ...] = DEFAULT_HOLDOUT_CITIES,
    synthetic_images: int = 2000,
    synthetic_cities: int = 8,
) -> tuple[SplitConfig, ShardConfig, SyntheticConfig]:
    """The step configs for these parameters; ValueError (one line) before any work."""
    _check_msls_cities(holdout_cities)
    split = SplitConfig(val_fraction=val_fraction, seed=seed, holdout_cities=tuple(holdout_cities))
    shard = ShardConfig(resolution=resolution, shard_size=shard_size, include_panos=include_panos)
    synthetic = SyntheticConfig(n_images=synthetic_images, n_cities=synthetic_cities, seed=seed)
    return split, shard, synthetic


def _check_msls_cities(cities: tuple[str, ...]) -> None:
    """A misspelt held-out city would silently hold out nothing: refuse it up front."""
    known = (*ALL_TRAIN_VAL_CITIES, *TEST_CITIES)
    unknown = [c for c in cities if c not in known] if not isinstance(cities, str) else []
    if unknown:
        raise ValueError(
            f"holdout_cities: unknown city {unknown[0]!r}; MSLS cities are {', '.join(known)}"
        )


@flow(name="msls-write-shards", task_runner=ThreadPoolTaskRunner(max_workers=cpu_count()))
def write_shards(jobs: list[ShardJob]) -> list[dict]:
    """One task run per shard, on all cores (swap the runner for Dask to scale out).

    Threads, not processes: decode, resize and encode release the GIL (measured 1.8x on
    2 cores), and a process pool makes each worker start its own Prefect API server.
    """
    return [future.result() for future in write_shard_task.map(jobs)]


@flow(name="msls-prepare")
def prepare(
    source: str = "synthetic",
    data_root: str | None = None,
    resolution: int = 64,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_size: int = 5000,
    include_panos: bool = False,
    holdout_cities: tuple[str, ...] = DEFAULT_HOLDOUT_CITIES,
    synthetic_images: int = 2000,
    synthetic_cities: int = 8,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> dict:
    """Build (or find) the dataset version for these parameters; return its summary.

    Holds the data root's prepare lock throughout: a second prepare or re-shard on the
    same root waits for this one (up to its `lock_timeout` seconds), then finds the
    version built.
    """
    split, shard, synthetic = prepare_configs(
        resolution,
        val_fraction,
        seed,
        shard_size,
        include_panos,
        holdout_cities,
        synthetic_images,
        synthetic_cities,
    )
    layout = DataLayout.at(data_root)
    root = layout.root
    with prepare_lock(layout, lock_timeout):
        source_dir = acquire_source_task(source, root / "raw", synthetic)
        catalog = catalog_task(source_dir, root, CatalogConfig())
        plan: DatasetPlan = split_task(catalog, root, split, shard)
        if not plan.complete:
            write_shards(plan.jobs(Path(source_dir), shard))
        version_dir = finalize_task(plan, root, catalog)
    return {"version": plan.version, "path": str(version_dir), "built": not plan.complete}
