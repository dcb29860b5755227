"""How far a run is, in the Prefect UI: progress artifacts for training and preparation.

A Prefect task shows "Running" for as long as it runs; a progress artifact (a bar on
the flow run's Artifacts tab and in the Artifacts page under its key) says how far.
`PrefectProgress` is one such artifact; `TrainingProgress` is the training loop's
callback that moves it at logging steps (`gan/` stays free of Prefect), and
`StatsProgress` follows a run's stats.jsonl from the launching process when torchrun
processes do the training. Outside a Prefect run all of them do nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from uuid import UUID

from gan.trainer import Trainer
from shards.layout import DataLayout
from shards.reader import DatasetVersion
from tasks.jobs import TrainJob

TRAIN_KEY = "msls-train-progress"
PREPARE_KEY = "msls-prepare-progress"
# (start, end) of prepare steps on its bar (the source before, finalizing after them);
# the shards take the most time.
PREPARE_SHARES = {"catalog": (0.1, 0.3), "split": (0.3, 0.35), "shards": (0.35, 0.95)}
MIN_INTERVAL = 5.0  # seconds between updates: an API call each, and the UI polls anyway

log = logging.getLogger("msls.progress")


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class PrefectProgress:
    """One progress artifact of the current flow run, 0-100 %, updated at most every 5 s.

    `artifact_id` continues an artifact made elsewhere (e.g. by a parent flow), and
    `start`..`end` maps this part of the work onto a share of its bar (fractions).
    A failed update is logged, never raised: progress must not break a run.
    """

    def __init__(
        self,
        key: str,
        description: str,
        artifact_id: str = "",
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        self.start, self.end, self.last = start, end, 0.0
        self.id: UUID | None = UUID(artifact_id) if artifact_id else None
        if self.id is None and in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(100 * start, key=key, description=description)

    def update(self, fraction: float, force: bool = False) -> None:
        """Move the bar to `fraction` (0..1) of this part of the work."""
        now = time.monotonic()
        if self.id is None or (not force and now - self.last < MIN_INTERVAL):
            return
        self.last = now
        share = self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0)
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.id, round(100 * share, 1))
        except Exception as exc:  # the API being away must not stop training
            log.warning("progress artifact %s not updated: %s", self.id, exc)


class TrainingProgress:
    """Training loop callback: the budget spent (steps, epochs or minutes), as a bar."""

    def __init__(self, job: TrainJob) -> None:
        version = DatasetVersion(DataLayout.at(job.data_root).dataset(job.dataset))
        budget = job.budget(version.samples("train"), job.nproc, 0)
        self.steps, self.seconds = budget.steps, budget.minutes * 60
        self.started = time.monotonic()
        self.bar = PrefectProgress(TRAIN_KEY, f"training {job.run or 'run'} on {job.dataset}")

    def fraction(self, step: int) -> float:
        """Share of the budget spent: whichever of steps and minutes ends it first."""
        by_steps = step / self.steps if self.steps else 0.0
        by_time = (time.monotonic() - self.started) / self.seconds if self.seconds else 0.0
        return max(by_steps, by_time)

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.bar.update(self.fraction(trainer.step))

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        self.bar.update(1.0, force=True)


class StatsProgress:
    """TrainingProgress fed from `<run_dir>/stats.jsonl` by a thread, for torchrun runs.

    The launcher holds the Prefect context; its torchrun processes need not reach the
    Prefect API. Use as a context manager around the launch.
    """

    def __init__(self, progress: TrainingProgress, stats: Path, every: float = MIN_INTERVAL):
        self.progress, self.stats, self.every = progress, stats, every
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> StatsProgress:
        import contextvars

        context = contextvars.copy_context()  # Prefect's settings and run live in contextvars
        self.thread = threading.Thread(target=context.run, args=(self._follow,), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if exc[0] is None:
            self.progress.bar.update(1.0, force=True)

    def _follow(self) -> None:
        while not self.stop.wait(self.every):
            step = last_step(self.stats)
            if step is not None:
                self.progress.bar.update(self.progress.fraction(step), force=True)


def last_step(stats: Path) -> int | None:
    """The step of the last complete line of a stats.jsonl, or None if there is none yet."""
    try:
        lines = stats.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line being written
    return None
