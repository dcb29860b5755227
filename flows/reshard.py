"""The msls-reshard flow (scheduled): rebuild the dataset if its inputs changed, then prune.

Wiring only: the build is a no-op returning the current version unless the catalog or
the options changed; the prune step keeps the newest `keep` versions, LATEST and every
leased one (see shards/retention.py). Parameters: the options of `tasks.jobs.ReshardJob`.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow, get_run_logger

from flows.options import resolve, with_options
from flows.prepare import build_version
from shards.layout import DataLayout
from shards.lock import prepare_lock
from shards.retention import latest_version
from tasks.jobs import ReshardJob
from tasks.retention import prune_task


@flow(name="msls-reshard")
@with_options(ReshardJob)
def reshard(data_root: str | None = None, **options) -> dict:
    """Re-shard if needed, prune old versions; return {version, previous, changed, pruned}.

    Build and prune run under one hold of the prepare lock, so a prepare started
    meanwhile cannot slip between them (and have its staging directory pruned).

    Args:
        data_root: Data root; default $MSLS_DATA, else ./data.
    """
    job = replace(resolve(ReshardJob, options, preset=None), data_root=data_root or "")
    logger = get_run_logger()
    layout = DataLayout.at(job.data_root or None)
    with prepare_lock(layout, job.lock_timeout):
        previous = latest_version(layout)
        version = build_version(job)["version"]
        changed = version != previous
        if changed:
            logger.info("new version %s (was %s); LATEST moved", version, previous or "none")
        else:
            logger.info("no change: version %s is current", version)
        pruned = prune_task(str(layout.root), job.keep)
    logger.info("pruned %d old version(s) (keep=%d): %s", len(pruned), job.keep, pruned or "none")
    return {"version": version, "previous": previous, "changed": changed, "pruned": pruned}
