"""DAG step: split sequences into train/val/ood and assign samples to shards."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from shards.catalog import Catalog
from shards.dataset import DatasetPlan, plan_dataset
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.split import SplitConfig


def plan_version(
    catalog: Catalog, data_root: Path, split: SplitConfig, shard: ShardConfig
) -> DatasetPlan:
    """Plan the dataset version these inputs define (a no-op plan if it exists)."""
    return plan_dataset(catalog, DataLayout.at(data_root), split, shard)


split_task = task(name="split")(plan_version)
