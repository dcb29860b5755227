"""DAG step: write the shards of a planned version, then finalize it.

`write_shard_task` is mapped over shards (one task run per tar, retried alone); the
flow runs it on a process pool locally or on a Dask cluster.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from shards.catalog import Catalog
from shards.dataset import DatasetPlan, finalize_dataset
from shards.layout import DataLayout
from shards.provenance import code_version
from shards.writer import write_shard


def finalize_version(plan: DatasetPlan, data_root: Path, catalog: Catalog) -> Path:
    """Manifest, dataset.json, rename into place, move LATEST; returns the version dir."""
    return finalize_dataset(plan, DataLayout.at(data_root), catalog, code_version())


write_shard_task = task(name="write-shard", retries=2, retry_delay_seconds=5)(write_shard)
finalize_task = task(name="finalize")(finalize_version)
