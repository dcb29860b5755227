"""Dataset retention (leases, pruning) and the msls-reshard flow, on real files."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.reshard import reshard
from shards.atomic import write_text
from shards.layout import DataLayout
from shards.retention import active_leases, lease, lease_dir, prune_versions
from shards.synthetic import SyntheticConfig, write_synthetic_patch
from tasks.retention import prune_versions_at

SMALL = {"synthetic_images": 120, "synthetic_cities": 3}


def _version(layout: DataLayout, name: str, day: int) -> Path:
    """A complete-looking version created on 2026-01-<day>."""
    path = layout.dataset(name)
    (path / "train").mkdir(parents=True)
    (path / "train" / "shard-000000.tar").write_bytes(b"x" * 10)
    created = dt.datetime(2026, 1, day, tzinfo=dt.UTC).isoformat(timespec="seconds")
    write_text(path / "dataset.json", json.dumps({"version": name, "created": created}))
    return path


def _point(layout: DataLayout, name: str) -> None:
    write_text(layout.latest_pointer, name + "\n")


def _versions(layout: DataLayout) -> set[str]:
    return {p.name for p in layout.datasets.iterdir() if p.is_dir() and not p.name.startswith(".")}


@pytest.fixture
def layout(tmp_path) -> DataLayout:
    layout = DataLayout.at(tmp_path)
    for name, day in [("aaa", 1), ("bbb", 3), ("ccc", 2), ("ddd", 4)]:
        _version(layout, name, day)
    _point(layout, "ddd")
    return layout


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lease(layout: DataLayout, version: str, holder: str, **record) -> Path:
    path = lease_dir(layout, version) / f"{holder}.json"
    write_text(path, json.dumps(record))
    return path


def test_prunes_the_oldest_by_created_time_not_by_name(layout):
    assert prune_versions(layout, keep=2) == ["ccc", "aaa"]
    assert _versions(layout) == {"bbb", "ddd"}
    assert not [p for p in layout.datasets.iterdir() if p.name.startswith(".trash-")]
    assert prune_versions(layout, keep=2) == []


def test_ties_in_created_time_break_by_name(tmp_path):
    layout = DataLayout.at(tmp_path)
    for name in ("xx1", "xx2", "xx3"):
        _version(layout, name, 5)
    _point(layout, "xx3")
    assert prune_versions(layout, keep=1) == ["xx2", "xx1"]


def test_the_latest_version_is_never_pruned(layout):
    _point(layout, "aaa")  # rolled back to the oldest
    assert sorted(prune_versions(layout, keep=1)) == ["bbb", "ccc"]
    assert _versions(layout) == {"aaa", "ddd"}
    assert prune_versions_at(str(layout.root), keep=1) == []


def test_keep_below_one_is_a_one_line_value_error(layout):
    with pytest.raises(ValueError, match="keep must be an integer >= 1") as error:
        prune_versions(layout, keep=0)
    assert "\n" not in str(error.value)
    assert _versions(layout) == {"aaa", "bbb", "ccc", "ddd"}


def test_a_lease_protects_its_version_until_released(layout):
    with lease(layout, "aaa", "reader") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert [r["holder"] for r in active_leases(layout, "aaa")] == ["reader"]
        assert prune_versions(layout, keep=1) == ["bbb", "ccc"]
        assert _versions(layout) == {"aaa", "ddd"}
    assert not path.exists() and active_leases(layout, "aaa") == []
    assert prune_versions(layout, keep=1) == ["aaa"]
    assert not lease_dir(layout, "aaa").exists()


def test_a_lease_is_released_on_exceptions(layout):
    with pytest.raises(RuntimeError), lease(layout, "aaa", "reader") as path:
        raise RuntimeError("boom")
    assert not path.exists()


def test_a_lease_held_by_another_process_protects_its_version(layout):
    code = (
        "import sys; from shards.layout import DataLayout; from shards.retention import lease\n"
        f"with lease(DataLayout.at({str(layout.root)!r}), 'aaa', 'other'):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "held"
        assert [r["pid"] for r in active_leases(layout, "aaa")] == [other.pid]
        assert "aaa" not in prune_versions(layout, keep=1)
        assert "aaa" in _versions(layout)
    finally:
        other.communicate("")  # closes its stdin: the lease is released
    assert prune_versions(layout, keep=1) == ["aaa"]


def test_a_stale_lease_of_a_dead_pid_does_not_protect(layout):
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    path = _write_lease(
        layout, "aaa", "gone", pid=_dead_pid(), host=socket.gethostname(), created=now
    )
    assert active_leases(layout, "aaa") == []
    assert not path.exists()  # stale: removed
    _write_lease(layout, "aaa", "gone", pid=_dead_pid(), host=socket.gethostname(), created=now)
    assert "aaa" in prune_versions(layout, keep=1)


def test_a_lease_from_another_host_counts_until_its_ttl(layout):
    fresh = dt.datetime.now(dt.UTC) - dt.timedelta(days=6)
    _write_lease(layout, "aaa", "far", pid=1, host="elsewhere", created=fresh.isoformat())
    assert "aaa" not in prune_versions(layout, keep=1)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    _write_lease(layout, "aaa", "far", pid=1, host="elsewhere", created=old.isoformat())
    assert prune_versions(layout, keep=1) == ["aaa"]


def test_leftover_staging_and_trash_dirs_are_removed(layout):
    old_staging = layout.staging("old")
    (old_staging / "train").mkdir(parents=True)
    (old_staging / "plan.json").write_text("{}")
    two_days_ago = time.time() - 2 * 86400
    for path in (old_staging / "plan.json", old_staging / "train", old_staging):
        os.utime(path, (two_days_ago, two_days_ago))
    fresh_staging = layout.staging("building")
    fresh_staging.mkdir()
    (layout.datasets / ".trash-zzz" / "train").mkdir(parents=True)
    prune_versions(layout, keep=4)
    assert not old_staging.exists() and not (layout.datasets / ".trash-zzz").exists()
    assert fresh_staging.exists()
    assert _versions(layout) == {"aaa", "bbb", "ccc", "ddd"}


@pytest.mark.parametrize(
    ("params", "message"),
    [({"keep": 0}, "keep must be"), ({"val_fraction": 2.0}, "val_fraction must be in")],
)
def test_bad_parameters_fail_before_any_work(tmp_path, params, message):
    with pytest.raises(ValueError, match=message) as error:
        reshard.fn(data_root=str(tmp_path), **params)
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_reshard_builds_on_change_and_prunes_what_is_not_leased(prefect_api, tmp_path):
    root, layout = str(tmp_path), DataLayout.at(tmp_path)
    first = reshard(data_root=root, **SMALL)
    assert first["changed"] is True and first["previous"] is None and first["pruned"] == []
    old = first["version"]
    again = reshard(data_root=root, **SMALL)
    assert again == {"version": old, "previous": old, "changed": False, "pruned": []}
    assert _versions(layout) == {old}

    (source_dir,) = (tmp_path / "raw").glob("synthetic-*")
    write_synthetic_patch(source_dir, SyntheticConfig(n_images=120, n_cities=3, seed=0))
    with lease(layout, old, "test-reader"):
        patched = reshard(data_root=root, keep=1, **SMALL)
        new = patched["version"]
        assert new != old
        assert patched == {"version": new, "previous": old, "changed": True, "pruned": []}
        assert layout.latest_pointer.read_text().strip() == new
        assert _versions(layout) == {old, new}  # the leased old version survives
    after = reshard(data_root=root, keep=1, **SMALL)
    assert after == {"version": new, "previous": new, "changed": False, "pruned": [old]}
    assert _versions(layout) == {new}
