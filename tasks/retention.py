"""DAG step: prune old dataset versions (the work is `shards.retention.prune_versions`)."""

from __future__ import annotations

from prefect import task

from shards.layout import DataLayout
from shards.retention import prune_versions


def prune_versions_at(data_root: str, keep: int) -> list[str]:
    """Prune the versions under `data_root` beyond the newest `keep`; return their ids."""
    return prune_versions(DataLayout.at(data_root), keep)


prune_task = task(name="prune")(prune_versions_at)
