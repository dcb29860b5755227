"""DAG step: catalog the source (one Parquet row per image, with status)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from shards.catalog import Catalog, CatalogConfig, build_catalog
from shards.layout import DataLayout


def catalog_source(source_dir: Path, data_root: Path, config: CatalogConfig) -> Catalog:
    """Catalog `source_dir` into the data root's catalog folder."""
    return build_catalog(source_dir, DataLayout.at(data_root).catalog, config)


catalog_task = task(name="catalog", retries=1, retry_delay_seconds=5)(catalog_source)
