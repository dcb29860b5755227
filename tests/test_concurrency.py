"""Two writers on one data root, and a re-shard under a running training job."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.reshard import reshard
from shards.dataset import resolve_version
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.lock import LockBusyError, lock_path, prepare_lock
from shards.retention import list_versions, prune_versions
from shards.verify import verify_dataset
from tasks.train import train_model
from tests.msls_builder import jpeg, two_city_source
from tests.processes import REPO, prepare_args, start
from tests.tiny import build_dataset, tiny_job

HOLD = """
import sys, time
from shards.layout import DataLayout
from shards.lock import prepare_lock
with prepare_lock(DataLayout.at(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture()
def source(tmp_path) -> Path:
    return two_city_source(tmp_path / "src")


@pytest.fixture()
def held(tmp_path):
    """Another process holding the data root's prepare lock until the test ends."""
    layout = DataLayout.at(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(layout.root)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    yield layout, proc
    proc.communicate("")


def test_two_prepares_at_once_build_one_version_and_both_succeed(tmp_path, source):
    layout = DataLayout.at(tmp_path / "data")
    procs = [start(prepare_args(source, layout)) for _ in range(2)]
    errors = [proc.communicate()[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    assert len(list_versions(layout)) == 1
    assert verify_dataset(layout.dataset(resolve_version(layout)), workers=1).ok


def test_a_prepare_waits_while_another_holds_the_root(held, source):
    layout, holder = held
    waiting = start(prepare_args(source, layout, 2, "600"))
    line = waiting.stderr.readline()
    assert "another prepare or re-shard is running; waiting" in line
    assert waiting.poll() is None and not (layout.root / "catalog").exists()
    holder.communicate("")  # the first run ends
    assert waiting.wait(timeout=120) == 0
    assert verify_dataset(layout.dataset(resolve_version(layout)), workers=1).ok


def test_a_prepare_that_may_not_wait_exits_with_one_line_and_touches_nothing(
    prefect_api, held, source
):
    layout, _ = held
    args = ["--data-root", str(layout.root), "prepare", "--source", str(source)]
    result = CliRunner().invoke(app, [*args, "--lock-timeout", "0"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: {lock_path(layout)}: another prepare or re-shard still runs on this data "
        "root after 0s; let it finish and run again (or raise the lock timeout)"
    ]
    assert sorted(p.name for p in layout.root.rglob("*")) == [".prepare.lock", "datasets"]


def test_a_scheduled_reshard_that_may_not_wait_fails_cleanly(prefect_api, held, source):
    layout, _ = held
    with pytest.raises(LockBusyError, match="another prepare or re-shard still runs"):
        reshard(source=str(source), data_root=str(layout.root), lock_timeout=0)
    assert not (layout.root / "catalog").exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    layout = DataLayout.at(tmp_path)
    with prepare_lock(layout), prepare_lock(layout, timeout=0):
        assert prune_versions(layout, keep=1) == []


def test_a_negative_lock_timeout_is_one_line(tmp_path):
    lock = prepare_lock(DataLayout.at(tmp_path), timeout=-1)
    with pytest.raises(ValueError, match="lock timeout must be >= 0 seconds"), lock:
        pass


class ReshardMidRun:
    """At the first log line, add a volume and re-shard with keep=1, as the cron would."""

    def __init__(self, source: Path, layout: DataLayout) -> None:
        self.source, self.layout, self.result = source, layout, None

    def on_log(self, trainer, metrics) -> None:
        if self.result is None:
            with zipfile.ZipFile(self.source / "msls_patch_v1.1.zip", "w") as zf:
                zf.writestr("train_val/austin/database/images/ausaustin0f0.jpg", jpeg(90, 60, 9))
            self.result = reshard(
                source=str(self.source), data_root=str(self.layout.root), keep=1,
                val_fraction=0.2, shard_size=6,
            )  # fmt: skip

    def on_checkpoint(self, trainer, path) -> None: ...

    def on_end(self, trainer) -> None: ...


def test_reshard_under_a_running_training_keeps_its_version_until_it_ends(prefect_api, tmp_path):
    layout = DataLayout.at(build_dataset(tmp_path))
    old = resolve_version(layout)
    callback = ReshardMidRun(tmp_path / "src", layout)
    job = tiny_job(layout.root, steps=6, loader=LoaderConfig(cache="none", workers=1))
    result = train_model(job, [callback])
    assert result["step"] == 6 and result["dataset"] == old
    assert callback.result["changed"] and callback.result["pruned"] == []  # old was leased
    assert resolve_version(layout) == callback.result["version"] != old
    assert verify_dataset(layout.dataset(old), workers=1).ok  # read to the end, untouched
    assert prune_versions(layout, keep=1) == [old]  # the lease ended with the run
