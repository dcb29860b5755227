"""DAG step: train the DCGAN on a dataset version, on one accelerator or several.

`train_model` is the plain function (the CLI and the flow call it). With `nproc > 1`
it relaunches itself under torchrun (`python -m tasks.train --job job.json`), one
process per device, and reads the result rank 0 leaves in the run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

from prefect import task

from gan.accelerators import ddp_backend, resolve_accelerator
from gan.checkpoint import load_checkpoint
from gan.distributed import init_process_group, shutdown, world_from_env
from gan.loop import Callback, ProgressCallback, fit, options_json, restore
from gan.trainer import Trainer
from shards.atomic import write_text
from shards.conditions import condition_classes, untrained_classes
from shards.dataset import resolve_version, resume_version
from shards.layout import DataLayout
from shards.options import from_dict
from shards.provenance import code_version
from shards.reader import make_batches
from shards.retention import lease
from shards.rundir import RunDir
from shards.version import DatasetVersion
from tasks.jobs import TrainJob


def pin_dataset(job: TrainJob) -> TrainJob:
    """`job` on the dataset version it will train on, checked before any work starts.

    A resume continues on its checkpoint's version (not LATEST's); `latest` is resolved;
    a split too small for `nproc` ranks of `batch_size` says so in one line now, not
    once per rank after they started.
    """
    layout = DataLayout.at(job.data_root)
    if job.resume:
        checkpoint = _checkpoint_path(RunDir.for_run(layout, "", resume=job.resume).path, job)
        recorded = load_checkpoint(checkpoint, mmap=True).get("dataset")
        job = replace(job, dataset=resume_version(layout, job.dataset, recorded, checkpoint))
    job = replace(job, dataset=resolve_version(layout, job.dataset))
    if job.nproc > 1:
        version = DatasetVersion(layout.dataset(job.dataset))
        version.batches_per_rank("train", job.train.batch_size, job.nproc)
    return job


def train_model(job: TrainJob, callbacks: list[Callback] | None = None) -> dict:
    """Train per `job`; return {run, run_dir, checkpoint, step, dataset}."""
    layout = DataLayout.at(job.data_root)
    job = pin_dataset(job)
    run_dir = RunDir.for_run(layout, job.dataset, job.run, job.resume).path
    if job.nproc > 1 and world_from_env().size == 1:
        return _launch(job, run_dir)
    return _train(job, run_dir, callbacks or [])


def _launch(job: TrainJob, run_dir: Path, args: tuple[str, ...] = ()) -> dict:
    """Run this module under torchrun with one process per device; wait for it.

    `args` go to every process's `main()` (`--tracked`: rank 0 tracks the run).
    """
    job = replace(job, run=job.run or run_dir.name)  # every rank must find the same run dir
    job_file = RunDir(run_dir).job
    write_text(job_file, json.dumps(job.to_dict(), indent=2))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={job.nproc}",
        "-m",
        "tasks.train",
        "--job",
        str(job_file),
        *args,
    ]
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"distributed training failed (exit {completed.returncode}); see the log above"
        )
    return json.loads(RunDir(run_dir).result.read_text())


def _train(job: TrainJob, run_dir: Path, callbacks: list[Callback]) -> dict:
    world = world_from_env()
    accelerator = resolve_accelerator(job.device, world.local_rank)
    init_process_group(world, ddp_backend(accelerator.kind))
    try:
        state = load_checkpoint(_checkpoint_path(run_dir, job)) if job.resume else None
        if state is not None:  # the checkpoint's configs rebuild what it was trained with
            job = _with_saved_configs(job, state["job"])
        version = DatasetVersion(DataLayout.at(job.data_root).dataset(job.dataset))
        if state is None:  # the model is built for the dataset's resolution (and cities)
            condition = job.model.conditional
            classes = condition_classes(version.cities, condition)
            manifest = version.path / "manifest.parquet"
            untrained = untrained_classes(classes, manifest, condition)
            model = replace(
                job.model, resolution=version.resolution, classes=classes, untrained=untrained
            )
            job = replace(job, model=model)
        held = (
            lease(DataLayout.at(job.data_root), job.dataset, f"train-{run_dir.name}-{world.rank}")
            if world.is_main
            else contextlib.nullcontext()
        )
        with held:  # no pruning of this version while it is read
            batches = make_batches(
                version,
                "train",
                job.loader,
                batch_size=job.train.batch_size,
                seed=job.train.seed,
                rank=world.rank,
                world_size=world.size,
                device=accelerator.device,
                condition=job.model.conditional,
            )
            trainer = Trainer(job.train, job.model, accelerator, world)
            if state is not None:
                restore(trainer, batches, state)
            budget = job.budget(version.samples("train"), world.size, trainer.step)
            if world.is_main:
                write_text(
                    RunDir(run_dir).options,
                    options_json(
                        job=job.to_dict(),
                        code_version=code_version(),
                        accelerator=accelerator.kind,
                        world_size=world.size,
                    ),
                )
            progress = ProgressCallback(budget.steps or None)
            extra = {"job": job.to_dict(), "code_version": code_version(), "dataset": job.dataset}
            checkpoint = fit(
                trainer, batches, budget, run_dir, job.loop, [progress, *callbacks], extra
            )
        result = {
            "run": run_dir.name,
            "run_dir": str(run_dir),
            "checkpoint": str(checkpoint),
            "step": trainer.step,  # what the budget bought: steps, in `seconds` of training
            "seconds": round(trainer.seconds, 1),
            "health": trainer.health,  # each kind of warning the run raised -> first step
            "dataset": job.dataset,
        }
        if world.is_main:
            write_text(RunDir(run_dir).result, json.dumps(result))
        return result
    finally:
        shutdown()


def _with_saved_configs(job: TrainJob, saved: dict) -> TrainJob:
    """`job` with the model, optimisation, loader and loop configs of a checkpoint.

    Fields that older versions saved and this one no longer has (LoaderConfig's own
    batch_size and seed, now the run's) are dropped: the run's values stand for them.
    """
    configs = {}
    for section in ("train", "model", "loader", "loop"):
        kind = type(getattr(job, section))
        known = {f.name for f in fields(kind)}
        configs[section] = from_dict(kind, {k: v for k, v in saved[section].items() if k in known})
    return replace(job, **configs)


def _checkpoint_path(run_dir: Path, job: TrainJob) -> Path:
    path = Path(job.resume)
    return path if path.suffix == ".pt" else RunDir(run_dir).checkpoint


def train_tracked(job: TrainJob) -> dict:
    """`train_model` tracked in MLflow, with fixed-noise sample grids: what the flow runs.

    With `nproc > 1` this process creates the MLflow run and rank 0 of the torchrun
    processes fills it (the same callbacks as one process); a failure marks it FAILED.
    """
    from tasks.progress import StatsProgress, TrainingProgress
    from tasks.track import MlflowCallback, pin_run, run_id_of

    job, run_dir = pin_run(pin_dataset(job))
    progress = TrainingProgress(job)  # a bar in the Prefect UI
    with MlflowCallback(job, run_dir) as tracker:  # a crash marks the MLflow run FAILED
        if job.nproc > 1 and world_from_env().size == 1:
            with StatsProgress(progress, RunDir(run_dir).stats):
                result = _launch(job, run_dir, ("--tracked",))
        else:
            result = train_model(job, [progress, *tracked_callbacks(job, run_dir, tracker)])
    return {**result, "mlflow_run_id": run_id_of(run_dir)}


def tracked_callbacks(
    job: TrainJob, run_dir: Path, tracker: Callback | None = None
) -> list[Callback]:
    """Sample grids every `loop.sample_every` steps, then MLflow (last: it uploads the grids)."""
    from gan.render import SampleGridCallback
    from tasks.track import MlflowCallback

    tracker = tracker if tracker is not None else MlflowCallback(job, run_dir)
    return [SampleGridCallback(run_dir, job.loop.sample_every), tracker]


train_task = task(name="train")(train_tracked)


def main() -> None:
    """Entry point of each torchrun process."""
    parser = argparse.ArgumentParser(description="one process of a distributed msls training run")
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--tracked", action="store_true", help="fill the run's MLflow run")
    args = parser.parse_args()
    job = TrainJob.from_dict(json.loads(args.job.read_text()))
    run_dir = args.job.parent
    train_model(job, tracked_callbacks(job, run_dir) if args.tracked else None)


if __name__ == "__main__":
    main()
