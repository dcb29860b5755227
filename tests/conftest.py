"""Shared fixtures: one temporary Prefect API for the whole session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' tensors are tiny: a second OpenMP thread only adds synchronisation, and
    on a busy 2-core box made small ops 10-100x slower. (Subprocesses are unaffected.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prefect_api():
    """A real (temporary, sqlite-backed) Prefect server for flow runs in tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
