"""The msls-prepare flow: source -> catalog -> split -> shards -> a dataset version.

Wiring only: each step is a task in tasks/, the work is in shards/.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from shards.catalog import CatalogConfig
from shards.dataset import DatasetPlan
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.lock import DEFAULT_LOCK_TIMEOUT, prepare_lock
from shards.parallel import cpu_count
from shards.publish import check_url
from shards.split import DEFAULT_HOLDOUT_CITIES, SplitConfig
from shards.synthetic import ALL_TRAIN_VAL_CITIES, TEST_CITIES, SyntheticConfig
from shards.writer import ShardJob
from tasks.catalog import catalog_task
from tasks.publish import publish_task
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
    """One task run per shard, on all cores here or on a Dask cluster (`shard_runner`).

    Threads by default: decode, resize and encode release the GIL (measured 1.8x on
    2 cores), and a process pool makes each worker start its own Prefect API server.
    """
    return [future.result() for future in write_shard_task.map(jobs)]


def shard_runner(dask: str) -> TaskRunner:
    """The task runner of the shard step: "" threads here, "local" a local Dask cluster
    (a process per core), else the address of a Dask scheduler (tcp://host:8786).

    Dask workers write into the data root's staging folder, so on a cluster it must be
    a shared filesystem mounted at the same path on every worker.
    """
    if not dask:
        return ThreadPoolTaskRunner(max_workers=cpu_count())
    from prefect_dask import DaskTaskRunner

    if dask == "local":
        kwargs = {"n_workers": cpu_count(), "threads_per_worker": 1, "processes": True}
        return DaskTaskRunner(cluster_kwargs=kwargs)
    return DaskTaskRunner(address=dask)


def check_scale_out(dask: str, publish: str) -> None:
    """The `dask` and `publish` parameters; ValueError (one line) before any work."""
    if dask and dask != "local" and not re.match(r"^(tcp|tls|inproc|ucx)://[^/\s]+$", dask):
        raise ValueError(
            f"dask must be '', 'local' or a scheduler address like tcp://host:8786, got {dask!r}"
        )
    if publish:
        check_url(publish)


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
    dask: str = "",
    publish: str = "",
) -> dict:
    """Build (or find) the dataset version for these parameters; return its summary.

    `dask` runs the shard step on a Dask cluster (see `shard_runner`); `publish` uploads
    the finished version to an fsspec URL (s3://bucket/msls, ...) with LATEST last.

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
    check_scale_out(dask, publish)
    layout = DataLayout.at(data_root)
    root = layout.root
    with prepare_lock(layout, lock_timeout):
        source_dir = acquire_source_task(source, root / "raw", synthetic)
        catalog = catalog_task(source_dir, root, CatalogConfig())
        plan: DatasetPlan = split_task(catalog, root, split, shard)
        if not plan.complete:
            write_shards.with_options(task_runner=shard_runner(dask))(
                plan.jobs(Path(source_dir), shard)
            )
        version_dir = finalize_task(plan, root, catalog)
    summary = {"version": plan.version, "path": str(version_dir), "built": not plan.complete}
    if publish:
        summary["published"] = publish_task(version_dir, publish)
    return summary
