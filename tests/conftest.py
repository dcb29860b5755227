"""Shared fixtures (one temporary Prefect API per worker) and the suite's scheduling."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Set before torch is imported, so it holds here and in every child process the tests
# start: their tensors are tiny, a second OpenMP thread only adds synchronisation, and
# on a busy 2-core box (two xdist workers keep it busy) it made small ops 10-100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow (end-to-end) tests first: with `--maxschedchunk 1` xdist hands them out
    one by one to whichever worker is free, and the quick tests fill the gaps instead of
    a slow one running alone at the end. (Without it, `load` gives the first worker a
    quarter of the suite at once, so all slow tests would run on one worker.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def prefect_api():
    """A real (temporary, sqlite-backed) Prefect server for flow runs in tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
