"""The MLflow sqlite store, created once, under a lock, before anyone opens it.

MLflow 3.17's sqlite tracking store creates and migrates its own tables the first time a
process opens it (`SqlAlchemyStore.__init__`), with no lock. Two processes opening a
fresh store together (`msls ui` started beside the quickstart's MLflow server, two
training slots, a server and a run) race inside alembic: one dies with "table
_alembic_tmp_metrics already exists" or "expected to match one row ... 0 found", and
the store can be left half-migrated so that every later open fails the same way. So
every process of ours that is about to open a sqlite store, or to start a server on
one, first calls `ready_store`: it holds `.<db name>.lock` beside the database while
MLflow creates the tables, and a process that comes second finds them made.
"""

from __future__ import annotations

import functools
from pathlib import Path

from filelock import FileLock
from sqlalchemy.engine import make_url

from shards.layout import DataLayout

LOCK_TIMEOUT = 600.0  # seconds; creating the tables takes ~2 s on a busy 2-core machine


class StoreError(ValueError):
    """The sqlite store cannot be opened (e.g. left half-migrated by an older race)."""


def ready_store(uri: str) -> str:
    """`uri`, once its tables exist at MLflow's schema; any store but a sqlite file unchanged.

    Raises StoreError naming the database file and what to do if MLflow cannot open or
    create it. Done once per process and URI.
    """
    if uri.partition(":")[0].partition("+")[0] != "sqlite":  # a server, a path, databricks
        return uri
    if make_url(uri).database in (None, "", ":memory:"):  # nothing on disk to share
        return uri
    return _created(uri)


@functools.cache
def _created(uri: str) -> str:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    database = Path(make_url(uri).database).resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(database.with_name(f".{database.name}.lock"), timeout=LOCK_TIMEOUT):
        try:
            artifacts = DataLayout.at(database.parent).mlflow_artifacts  # the data root's
            store = SqlAlchemyStore(uri, artifacts.as_uri())
        except Exception as error:
            reason = str(error).strip().splitlines()[0]
            raise StoreError(
                f"{database}: MLflow cannot open this store ({reason}); if it holds no runs "
                "yet, move it aside and run again, else restore it from a backup"
            ) from error
    store.engine.dispose()  # this process's later clients reconnect; nothing stays open
    return uri
