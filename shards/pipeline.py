"""The whole prepare pipeline as plain function calls, without Prefect.

The msls-prepare flow runs the same steps as tasks (retries, mapping, observability);
this is for benchmarks, tests and scripts that want the library alone.
"""

from __future__ import annotations

from pathlib import Path

from shards.catalog import CatalogConfig, build_catalog
from shards.dataset import DatasetPlan, finalize_dataset, plan_dataset
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.lock import DEFAULT_LOCK_TIMEOUT, prepare_lock
from shards.parallel import parallel_map
from shards.provenance import code_version
from shards.split import SplitConfig
from shards.writer import write_shard


def prepare_dataset(
    source_dir: Path,
    layout: DataLayout,
    split: SplitConfig = SplitConfig(),
    shard: ShardConfig = ShardConfig(),
    catalog_config: CatalogConfig = CatalogConfig(),
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> tuple[DatasetPlan, Path]:
    """Catalog, split, shard and finalize under the data root's prepare lock.

    Returns the plan and the version directory.
    """
    with prepare_lock(layout, lock_timeout):
        catalog = build_catalog(source_dir, layout.catalog, catalog_config)
        plan = plan_dataset(catalog, layout, split, shard)
        jobs = plan.jobs(source_dir, shard)
        list(parallel_map(write_shard, jobs, "writing shards", catalog_config.workers))
        return plan, finalize_dataset(plan, layout, catalog, code_version())
