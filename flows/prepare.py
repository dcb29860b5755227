"""The msls-prepare flow: source -> catalog -> split -> shards -> a dataset version.

Wiring only: each step is a task in tasks/, the work is in shards/. Its parameters are
the options of `tasks.jobs.PrepareJob` (derived by flows/options.py, never listed here).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.options import resolve, with_options
from shards.catalog import CatalogConfig
from shards.dataset import DatasetPlan
from shards.layout import DataLayout
from shards.lock import prepare_lock
from shards.parallel import cpu_count
from shards.writer import ShardJob
from tasks.catalog import catalog_task
from tasks.jobs import PrepareJob
from tasks.progress import PREPARE_KEY, PREPARE_SHARES, PrefectProgress
from tasks.publish import publish_task
from tasks.shard import finalize_task, write_shard_task
from tasks.source import acquire_source_task
from tasks.split import split_task


@flow(name="msls-write-shards", task_runner=ThreadPoolTaskRunner(max_workers=cpu_count()))
def write_shards(jobs: list[ShardJob], progress: str = "") -> list[dict]:
    """One task run per shard, on all cores here or on a Dask cluster (`shard_runner`).

    Threads by default: decode, resize and encode release the GIL (measured 1.8x on
    2 cores), and a process pool makes each worker start its own Prefect API server.
    `progress`: the id of the prepare flow's progress artifact, moved as shards finish.
    """
    bar = PrefectProgress(PREPARE_KEY, "", progress, *PREPARE_SHARES["shards"])
    futures = write_shard_task.map(jobs)
    for done, _ in enumerate(as_completed(futures), start=1):
        bar.update(done / len(jobs))
    return [future.result() for future in futures]


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


def build_version(job: PrepareJob) -> dict:
    """Build (or find) the dataset version of `job`; {version, path, built[, published]}.

    Holds the data root's prepare lock throughout: a second prepare or re-shard on the
    same root waits for this one (up to `job.lock_timeout` seconds), then finds the
    version built. Call it inside a flow (its steps are Prefect tasks).
    """
    layout = DataLayout.at(job.data_root or None)
    root = layout.root
    bar = PrefectProgress(PREPARE_KEY, f"preparing {job.source or 'synthetic'} in {root}")
    with prepare_lock(layout, job.lock_timeout):
        source_dir = acquire_source_task(job.source, root / "raw", job.synthetic)
        bar.update(PREPARE_SHARES["catalog"][0], force=True)
        catalog = catalog_task(source_dir, root, CatalogConfig())
        bar.update(PREPARE_SHARES["split"][0], force=True)
        plan: DatasetPlan = split_task(catalog, root, job.split, job.shard)
        if not plan.complete:
            write_shards.with_options(task_runner=shard_runner(job.dask))(
                plan.jobs(Path(source_dir), job.shard), str(bar.id or "")
            )
        version_dir = finalize_task(plan, root, catalog)
    bar.update(1.0, force=True)
    summary = {"version": plan.version, "path": str(version_dir), "built": not plan.complete}
    if job.publish:
        summary["published"] = publish_task(version_dir, job.publish)
    return summary


@flow(name="msls-prepare")
@with_options(PrepareJob)
def prepare(data_root: str | None = None, **options) -> dict:
    """Build (or find) the dataset version for these options; return its summary.

    `dask` runs the shard step on a Dask cluster (see `shard_runner`); `publish` uploads
    the finished version to an fsspec URL (s3://bucket/msls, ...) with LATEST last.

    Args:
        data_root: Data root; default $MSLS_DATA, else ./data.
    """
    job = resolve(PrepareJob, options, preset=None)
    return build_version(replace(job, data_root=data_root or ""))
