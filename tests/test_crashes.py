"""kill -9 at random points of prepare and training runs: nothing partial, nothing lost.

Each test runs the real pipeline in a child process, SIGKILLs it at a point drawn from
a seeded RNG (a delay, or the moment a checkpoint is being written), checks what a
reader would see, starts it again, and repeats; the finished result must equal an
uninterrupted run's. The counts land in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from gan.checkpoint import load_checkpoint
from gan.loop import LoopConfig
from gan.models import ModelConfig
from shards.dataset import resolve_version
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.verify import verify_dataset
from tasks.train import TrainJob, train_model
from tests.msls_builder import two_city_source
from tests.processes import after_seconds, never, prepare_args, run_until
from tests.tiny import build_dataset, tiny_job

PREPARE_KILLS = 16
TRAIN_KILLS = 6

TRAIN = """
import sys
from pathlib import Path
from tasks.train import train_model
from tests.test_crashes import crash_job
train_model(crash_job(Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume"))
"""


def crash_job(data_root: Path, run: str, resume: bool) -> TrainJob:
    """36 steps of a width-16 DCGAN logging every step and checkpointing every 3: the run
    the kills interrupt (in a child, TRAIN) and its uninterrupted reference."""
    return tiny_job(
        data_root, steps=36, run=run, resume=run if resume else "",
        model=ModelConfig(nz=32, ngf=16, ndf=16),
        loader=LoaderConfig(cache="none", workers=0),
        loop=LoopConfig(log_every=1, checkpoint_every=3),
    )  # fmt: skip


def timed(args: list[str]) -> float:
    begun = time.monotonic()
    assert not run_until(args, never)
    return time.monotonic() - begun


# --- prepare ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return two_city_source(tmp_path_factory.mktemp("crash") / "src", 30, (640, 480))


def prepare_phase(layout: DataLayout) -> str:
    """How far a killed run had got, read off the disk."""
    if list(layout.datasets.glob("*/dataset.json")):
        return "finalized"
    staging = next(layout.datasets.glob(".staging-*"), None)
    if staging is None:
        return "catalog" if not any(layout.catalog.glob("*.parquet")) else "split"
    if (staging / "manifest.parquet").exists():
        return "manifest"
    return f"shards ({len(list(staging.glob('.results/*.json')))} done)"


def writing_manifest(layout: DataLayout) -> Callable[[float], bool]:
    """True once the manifest is being written (or just was) in the staging folder."""
    return lambda _: bool(list(layout.datasets.glob(".staging-*/*manifest.parquet*")))


def assert_nothing_partial(layout: DataLayout) -> None:
    """What a reader can see is complete: whole versions, a LATEST naming one, whole files."""
    if not layout.datasets.is_dir():
        return
    for entry in layout.datasets.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.name == "LATEST":
            assert (layout.dataset(entry.read_text().strip()) / "dataset.json").is_file()
        else:
            assert (entry / "dataset.json").is_file(), f"{entry} is visible but incomplete"
            assert verify_dataset(entry, workers=1).ok
    for table in layout.catalog.glob("*.parquet"):
        pq.read_metadata(table)  # raises on a torn file


def test_prepare_killed_at_random_points_shows_nothing_partial_and_loses_nothing(tmp_path, source):
    reference = DataLayout.at(tmp_path / "reference")
    duration = timed(prepare_args(source, reference))
    expected = pq.read_table(reference.dataset(resolve_version(reference)) / "manifest.parquet")
    rng, phases, kills, rounds = random.Random(6), Counter(), 0, 0
    while kills < PREPARE_KILLS:
        layout = DataLayout.at(tmp_path / f"round{rounds}")
        # every third kill aims at the few milliseconds of the manifest write
        while run_until(
            prepare_args(source, layout),
            writing_manifest(layout) if kills % 3 == 2 else after_seconds(rng.uniform(0, duration)),
        ):
            kills += 1
            phases[prepare_phase(layout).split(" (")[0]] += 1
            assert_nothing_partial(layout)
        version = layout.dataset(resolve_version(layout))
        assert pq.read_table(version / "manifest.parquet").equals(expected)
        assert verify_dataset(version, workers=1).ok
        assert not list(version.rglob("*.tmp")), "a killed run's half shard got into the version"
        rounds += 1
    print(f"\nprepare: {kills} kills over {rounds} runs to completion; phases {dict(phases)}")
    assert len(phases) >= 2, f"kills landed in one phase only: {phases}"


def test_a_second_killed_prepare_leaves_no_torn_files_behind(tmp_path, source):
    layout = DataLayout.at(tmp_path / "data")
    assert run_until(prepare_args(source, layout), writing_manifest(layout))
    torn = layout.datasets / ".LATEST.killed.tmp"
    torn.write_text("half")
    assert not run_until(prepare_args(source, layout), never)
    assert not torn.exists()
    assert not list(layout.root.rglob("*.tmp"))


# --- training --------------------------------------------------------------------------


def train_args(data_root: Path, run: str, resume: bool) -> list[str]:
    return [sys.executable, "-c", TRAIN, str(data_root), run, "resume" if resume else "fresh"]


def checkpoint_step(path: Path) -> int:
    return load_checkpoint(path)["step"] if path.exists() else 0


def writing_checkpoint(run_dir: Path) -> Callable[[float], bool]:
    """True while a checkpoint is half-written (its temporary file exists)."""
    return lambda _: bool(list(run_dir.glob(".checkpoint.pt.*.tmp")))


def after_a_new_checkpoint(run_dir: Path, extra: float) -> Callable[[float], bool]:
    """True `extra` seconds after the run wrote a checkpoint (so mid-step, most likely)."""
    path = run_dir / "checkpoint.pt"
    initial = path.stat().st_mtime_ns if path.exists() else None
    seen: list[float] = []

    def due(t: float) -> bool:
        if not seen and path.exists() and path.stat().st_mtime_ns != initial:
            seen.append(t)
        return bool(seen) and t > seen[0] + extra

    return due


@pytest.mark.slow
def test_training_killed_mid_step_and_mid_checkpoint_resumes_to_the_same_weights(tmp_path):
    data_root = build_dataset(tmp_path)
    runs = DataLayout.at(data_root).runs
    train_model(crash_job(data_root, "straight", resume=False))  # the reference, in-process
    rng, kinds, kills, steps_seen = random.Random(3), Counter(), 0, []
    while kills < TRAIN_KILLS:
        run_dir, before = runs / "killed", checkpoint_step(runs / "killed" / "checkpoint.pt")
        if kills % 2:
            kind, due = "mid-checkpoint", writing_checkpoint(run_dir)
        else:
            kind, due = "mid-step", after_a_new_checkpoint(run_dir, rng.uniform(0, 0.1))
        if not run_until(train_args(data_root, "killed", resume=before > 0), due):
            pytest.fail("the run finished before it could be killed: give it more steps")
        kills += 1
        kinds[kind] += 1
        after = checkpoint_step(run_dir / "checkpoint.pt")  # loads: never half-written
        assert after >= before, "a kill lost a checkpoint that had been written"
        steps_seen.append(after)
    resume = (runs / "killed" / "checkpoint.pt").exists()
    assert not run_until(train_args(data_root, "killed", resume=resume), never)
    straight = load_checkpoint(runs / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(runs / "killed" / "checkpoint.pt")
    assert resumed["step"] == straight["step"] == 36
    for part in ("G", "D", "ema"):
        for name, tensor in straight[part].items():
            assert torch.equal(tensor, resumed[part][name]), f"{part}.{name} differs"
    logged = (runs / "killed" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == list(range(1, 37))
    assert not list((runs / "killed").glob(".*.tmp")), "a torn checkpoint was left behind"
    print(f"\ntraining: {kills} kills {dict(kinds)}; checkpoint steps after each {steps_seen}")
