"""The msls-reshard flow (scheduled): rebuild the dataset if its inputs changed, then prune.

Wiring only: `prepare` builds a new version only when the catalog or the parameters
changed (otherwise it is a no-op returning the current version); the prune step keeps
the newest `keep` versions, LATEST and every leased one (see shards/retention.py).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.prepare import check_scale_out, prepare, prepare_configs
from shards.layout import DataLayout
from shards.lock import DEFAULT_LOCK_TIMEOUT, prepare_lock
from shards.retention import check_keep, latest_version
from shards.split import DEFAULT_HOLDOUT_CITIES
from tasks.retention import prune_task


@flow(name="msls-reshard")
def reshard(
    source: str = "synthetic",
    data_root: str | None = None,
    keep: int = 3,
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
    """Re-shard if needed, prune old versions; return {version, previous, changed, pruned}.

    Prepare and prune run under one hold of the prepare lock, so a prepare started
    meanwhile cannot slip between them (and have its staging directory pruned).
    """
    check_keep(keep)
    params = {
        "resolution": resolution,
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_size": shard_size,
        "include_panos": include_panos,
        "holdout_cities": tuple(holdout_cities),
        "synthetic_images": synthetic_images,
        "synthetic_cities": synthetic_cities,
    }
    prepare_configs(**params)  # ValueError (one line) before any work
    check_scale_out(dask, publish)
    logger = get_run_logger()
    layout = DataLayout.at(data_root)
    root = str(layout.root)
    with prepare_lock(layout, lock_timeout):
        previous = latest_version(layout)
        version = prepare(source=source, data_root=root, dask=dask, publish=publish, **params)[
            "version"
        ]
        changed = version != previous
        if changed:
            logger.info("new version %s (was %s); LATEST moved", version, previous or "none")
        else:
            logger.info("no change: version %s is current", version)
        pruned = prune_task(root, keep)
    logger.info("pruned %d old version(s) (keep=%d): %s", len(pruned), keep, pruned or "none")
    return {"version": version, "previous": previous, "changed": changed, "pruned": pruned}
