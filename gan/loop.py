"""The training loop: budget, logging cadence, checkpoints, callbacks.

Callbacks are how the outside world watches a run (MLflow, progress bars, sample
grids) without `gan/` importing any of it. Every `log_every` steps the loop reads the
device metrics once, measures throughput and the share of time spent waiting for data,
checks the run's health (gan/health.py) and hands the numbers to every callback.

A stats.jsonl line holds `step`, the trainer's METRICS (`loss_d`, `loss_g`, `d_real`,
`d_fake`, `logit_gap`, `real_pos` in [0, 1], `ada_p`, `real_diversity`), `diversity` (of
a fixed latent batch of EMA samples), `images_per_s`, `data_wait`, `seconds` (training
time so far) and `health`, a list of warnings (empty when healthy). Callbacks get the
same dict; `health` is its only non-number.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from gan.checkpoint import save_checkpoint
from gan.distributed import all_mean
from gan.health import health_warnings, remedy
from gan.trainer import METRICS, Trainer
from shards.atomic import remove_torn_writes, write_text
from shards.options import option

log = logging.getLogger("msls.train")


@dataclass(frozen=True)
class Budget:
    """When to stop: after `steps` generator steps or `minutes` of training (first hit)."""

    steps: int = 0
    minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.minutes < 0 or (self.steps == 0 and self.minutes == 0):
            raise ValueError("give a positive number of steps, epochs or minutes to train for")

    def exhausted(self, step: int, seconds: float) -> bool:
        return (self.steps > 0 and step >= self.steps) or (
            self.minutes > 0 and seconds >= self.minutes * 60
        )


@dataclass(frozen=True)
class LoopConfig:
    log_every: int = option(50, "Steps between logged metrics (and progress updates).")
    checkpoint_every: int = option(
        1000, "Steps between checkpoints (one is also written at the end)."
    )
    sample_every: int = option(100, "Steps between fixed-noise sample grids.")

    def __post_init__(self) -> None:
        if min(self.log_every, self.checkpoint_every, self.sample_every) < 1:
            raise ValueError("log_every, checkpoint_every and sample_every must be >= 1")


class Callback(Protocol):
    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...
    def on_end(self, trainer: Trainer) -> None: ...


class Batches(Protocol):
    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> bool: ...  # False: its order was re-seeded


def fit(
    trainer: Trainer,
    batches: Batches,
    budget: Budget,
    run_dir: Path,
    loop: LoopConfig = LoopConfig(),
    callbacks: Sequence[Callback] = (),
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Train until the budget is spent; checkpoint every `checkpoint_every` steps and at the end.

    Returns the final checkpoint path. Only rank 0 writes files and calls callbacks.
    To resume, load the checkpoint into the trainer and `batches` first (`restore`).
    """
    checkpoint = run_dir / "checkpoint.pt"
    if trainer.world.is_main:  # clear up after a run of this dir that was killed
        trim_stats(run_dir / "stats.jsonl", trainer.step)
        remove_torn_writes(run_dir)
    window = _Window(trainer.acc.device)
    started, before = time.perf_counter(), trainer.seconds  # a resumed run adds to its time
    while not _should_stop(budget, trainer.step, time.perf_counter() - started, loop, trainer):
        wait = time.perf_counter()
        drawn = [next(batches) for _ in range(trainer.config.critic_steps)]
        window.add_wait(time.perf_counter() - wait, sum(images.shape[0] for images, _ in drawn))
        window.add(trainer.train_step(drawn))
        trainer.seconds = before + time.perf_counter() - started
        if trainer.step % loop.log_every == 0:
            metrics = window.flush(trainer)
            if trainer.world.is_main:
                _log_metrics(run_dir, trainer, metrics, callbacks)
        if trainer.step % loop.checkpoint_every == 0:
            _checkpoint(checkpoint, trainer, batches, extra_state, callbacks)
    if window.steps:  # the steps since the last log line (a short run may have no other)
        metrics = window.flush(trainer)
        if trainer.world.is_main:
            _log_metrics(run_dir, trainer, metrics, callbacks)
    _checkpoint(checkpoint, trainer, batches, extra_state, callbacks)
    if trainer.world.is_main:
        for callback in callbacks:
            callback.on_end(trainer)
    return checkpoint


def restore(trainer: Trainer, batches: Batches, state: dict) -> None:
    """Put a trainer and its batches back where a checkpoint left them (this rank's part)."""
    ranks = state["ranks"]
    if len(ranks) != trainer.world.size:
        raise ValueError(
            f"checkpoint was written by {len(ranks)} processes; resume it with --nproc {len(ranks)}"
        )
    trainer.load_state_dict(state)
    exact = trainer.load_rank_state(ranks[trainer.world.rank])
    exact &= batches.load_state_dict(ranks[trainer.world.rank]["data"])
    if not exact:
        log.warning(
            "the checkpoint's random streams were saved on another device type and cannot "
            "carry over to %s: re-seeded deterministically from them, so this run continues, "
            "but not bit for bit as it would have there",
            trainer.acc.device.type,
        )


def _should_stop(
    budget: Budget, step: int, seconds: float, loop: LoopConfig, trainer: Trainer
) -> bool:
    """The budget check; with several ranks, rank 0's clock decides at log steps for all."""
    if not dist.is_initialized() or budget.minutes == 0:
        return budget.exhausted(step, seconds)
    if step % loop.log_every != 0:
        return False
    flag = torch.tensor([float(budget.exhausted(step, seconds))], device=trainer.acc.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _checkpoint(
    path: Path, trainer: Trainer, batches: Batches, extra: dict | None, callbacks
) -> None:
    """Rank 0 writes the shared state plus every rank's data position and random streams."""
    mine = {"data": batches.state_dict(), **trainer.rank_state()}
    ranks = [mine]
    if dist.is_initialized():
        ranks = [None] * trainer.world.size
        dist.all_gather_object(ranks, mine)
    trainer.refresh_ema_batchnorm()  # the saved EMA G carries statistics of its own weights
    state = {**trainer.state_dict(), "ranks": ranks, **(extra or {})}
    if trainer.world.is_main:
        save_checkpoint(path, state)
        for callback in callbacks:
            callback.on_checkpoint(trainer, path)


def trim_stats(path: Path, step: int) -> None:
    """Keep the stats lines up to `step`, where a resumed run picks up.

    A run killed after its last checkpoint logged steps it will now train again, and
    maybe half a line; without this they would appear twice (or break the JSONL).
    """
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    kept = [line for line in lines if _stats_step(line) <= step]
    if len(kept) != len(lines):
        write_text(path, "".join(f"{line}\n" for line in kept))


def _stats_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn line: drop it


def _log_metrics(run_dir: Path, trainer: Trainer, metrics: dict, callbacks) -> None:
    advice = remedy(trainer.config, trainer.model_config)
    metrics["health"] = health_warnings(metrics, trainer.loss, trainer.step, advice)
    for warning in metrics["health"]:
        kind = warning.split(" (")[0]
        if kind not in trainer.health:  # once per kind in the log; every line in stats
            trainer.health[kind] = trainer.step
            log.warning("step %d: %s", trainer.step, warning)
    with open(run_dir / "stats.jsonl", "a") as handle:
        handle.write(json.dumps({"step": trainer.step, **metrics}) + "\n")
    for callback in callbacks:
        callback.on_log(trainer, metrics)


class _Window:
    """Sums of device metrics, images and data-wait time since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.sums = torch.zeros(len(METRICS), device=self.device)
        self.steps, self.images, self.wait = 0, 0, 0.0
        self.start = time.perf_counter()

    def add_wait(self, seconds: float, images: int) -> None:
        self.wait += seconds
        self.images += images

    def add(self, values: torch.Tensor) -> None:
        self.sums += values
        self.steps += 1

    def flush(self, trainer: Trainer) -> dict[str, float]:
        means = all_mean(self.sums / max(self.steps, 1)).tolist()  # the one host sync
        seconds = time.perf_counter() - self.start
        metrics = dict(zip(METRICS, means))
        metrics["diversity"] = trainer.sample_diversity()
        metrics["images_per_s"] = self.images * trainer.world.size / seconds
        metrics["data_wait"] = self.wait / seconds
        metrics["seconds"] = trainer.seconds
        memory = trainer.acc.memory_bytes()
        if memory is not None:
            metrics["accelerator_memory_gb"] = memory / 1e9
        self._reset()
        return metrics


class ProgressCallback:
    """A bar in a terminal, a log line per logging step elsewhere (e.g. under Prefect)."""

    def __init__(self, total_steps: int | None) -> None:
        self.total = total_steps
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.bar.start()
            self.task = self.bar.add_task("training", total=total_steps)

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        text = (
            f"step {trainer.step}{f'/{self.total}' if self.total else ''} "
            f"loss_d {metrics['loss_d']:.3f} loss_g {metrics['loss_g']:.3f} "
            f"{metrics['images_per_s']:.0f} img/s data-wait {metrics['data_wait']:.0%}"
        )
        if metrics.get("health"):
            text += f" | WARNING: {metrics['health'][0]}"
        if self.bar is not None:
            self.bar.update(self.task, completed=trainer.step, description=text)
        else:
            log.info(text)

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        log.debug("checkpoint at step %d: %s", trainer.step, path)

    def on_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.stop()


def options_json(**configs: Any) -> str:
    """The resolved options of a run, written once to options.json (stylegan's habit)."""
    resolved = {
        k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in configs.items()
    }
    return json.dumps(resolved, indent=2, sort_keys=True)
