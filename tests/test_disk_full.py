"""A disk that fills up while sharding: one clear error, nothing partial, a clean rerun.

Two real limits: a per-process file-size limit (RLIMIT_FSIZE: writes fail with EFBIG,
works anywhere) and a small tmpfs (ENOSPC: needs the right to mount, which this
machine's root has; where it is missing the test says so and skips).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from shards.dataset import resolve_version
from shards.layout import DataLayout
from shards.verify import verify_dataset
from tests.msls_builder import two_city_source
from tests.processes import PREPARE, never, prepare_args, run_until, start

SHARD_SIZE = 40  # train shards of ~89 KB; the catalog and plan are ~7 KB each
FILE_LIMIT = 48 * 1024
LIMITED = (
    "import resource, signal\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, don't kill us\n"
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_LIMIT}, {FILE_LIMIT}))\n"
)


@pytest.fixture()
def source(tmp_path) -> Path:
    return two_city_source(tmp_path / "src")


def assert_nothing_visible_or_torn(layout: DataLayout) -> None:
    visible = [p.name for p in layout.datasets.iterdir() if not p.name.startswith(".")]
    assert visible == [], "a version or LATEST appeared although sharding failed"
    assert not list(layout.root.rglob(".*.tmp")), "a half-written file was left behind"


def test_a_file_size_limit_while_sharding_names_the_shard_and_keeps_nothing(tmp_path, source):
    layout = DataLayout.at(tmp_path / "data")
    args = prepare_args(source, layout, SHARD_SIZE)
    args[2] = LIMITED + PREPARE
    proc = start(args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("shards.errors.DiskFullError: ") and ".tar: File too large" in last
    assert "Free space there or point --data-root (MSLS_DATA) at a larger disk" in last
    assert_nothing_visible_or_torn(layout)
    assert not run_until(prepare_args(source, layout, SHARD_SIZE), never)  # room again
    assert verify_dataset(layout.dataset(resolve_version(layout)), workers=1).ok


@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); RLIMIT test covers it")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_sharding_is_one_cli_line(prefect_api, small_disk, source):
    layout = DataLayout.at(small_disk / "data")
    args = ["--data-root", str(layout.root), "prepare", "--source", str(source)]
    result = CliRunner().invoke(app, [*args, "--shard-size", str(SHARD_SIZE)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device while writing it" in errors[0]
    assert_nothing_visible_or_torn(layout)
