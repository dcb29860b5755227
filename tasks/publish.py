"""DAG step: upload a finished dataset version to an fsspec URL (network: retried)."""

from __future__ import annotations

from prefect import task

from shards.publish import publish_version

publish_task = task(name="publish", retries=3, retry_delay_seconds=10)(publish_version)
