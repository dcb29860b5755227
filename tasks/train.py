"""DAG step: train the DCGAN on a dataset version, on one accelerator or several.

`train_model` is the plain function (the CLI and the flow call it). With `nproc > 1`
it relaunches itself under torchrun (`python -m tasks.train --job job.json`), one
process per device, and reads the result rank 0 leaves in the run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import secrets
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from prefect import task

from gan.accelerators import check_device, ddp_backend, resolve_accelerator
from gan.checkpoint import load_checkpoint
from gan.distributed import World, init_process_group, shutdown, world_from_env
from gan.loop import Budget, Callback, LoopConfig, ProgressCallback, fit, options_json, restore
from gan.models import ModelConfig
from gan.trainer import TrainConfig, Trainer
from shards.atomic import write_text
from shards.dataset import resolve_version, resume_version
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.provenance import code_version
from shards.reader import make_batches
from shards.retention import lease
from shards.version import DatasetVersion

SECTIONS = {"train": TrainConfig, "model": ModelConfig, "loader": LoaderConfig, "loop": LoopConfig}


@dataclass(frozen=True)
class TrainJob:
    """One training run: what to train on, where, for how long, with which configs."""

    data_root: str = "data"
    dataset: str = "latest"
    device: str = "auto"
    steps: int = 0
    epochs: float = 0.0
    minutes: float = 0.0
    nproc: int = 1
    run: str = ""  # run directory name under data/runs (default: time + dataset version)
    resume: str = ""  # a run name or a checkpoint path to continue
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"nproc must be >= 1, got {self.nproc}")
        for name in ("steps", "epochs", "minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_device(self.device)
        if not (self.steps or self.epochs or self.minutes or self.resume):
            raise ValueError("give --steps, --epochs or --minutes")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainJob:
        """Inverse of `to_dict`; unknown keys are rejected, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown train options: {sorted(unknown)}")
        sections = {name: _section(kind, data.get(name, {})) for name, kind in SECTIONS.items()}
        return cls(**{**data, **sections})


def _section(kind: type, values: dict):
    known = {f.name for f in fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} options: {sorted(unknown)}")
    if "betas" in values:
        values = {**values, "betas": tuple(values["betas"])}
    return kind(**values)


def train_job(
    data_root: str,
    dataset: str = "latest",
    device: str = "auto",
    steps: int = 0,
    epochs: float = 0.0,
    minutes: float = 0.0,
    batch_size: int = 128,
    loss: str = "bce",
    generator: str = "transposed",
    width: int = 64,
    cache: str = "auto",
    city_temperature: float = 1.0,
    skip_bad_shards: bool = False,
    nproc: int = 1,
    seed: int = 0,
    resume: str = "",
    resolution: int | None = None,
    compile: bool = False,
) -> TrainJob:
    """A TrainJob from the flat options users set (CLI flags, flow parameters).

    One place for the rules between options: WGAN-GP gets a discriminator without
    BatchNorm (its penalty is per sample), and the model's resolution is the dataset's.
    """
    d_norm = "layer" if loss == "wgan-gp" else "batch"
    model = ModelConfig(
        resolution=resolution or 64, ngf=width, ndf=width, generator=generator, d_norm=d_norm
    )
    return TrainJob(
        data_root=data_root, dataset=dataset, device=device, steps=steps, epochs=epochs,
        minutes=minutes, nproc=nproc, resume=resume,
        train=TrainConfig(batch_size=batch_size, loss=loss, seed=seed,
                          d_steps=5 if loss == "wgan-gp" else 1,
                          compile="inductor" if compile else ""),
        model=model,
        loader=LoaderConfig(cache=cache, city_temperature=city_temperature,
                            skip_bad_shards=skip_bad_shards),
        loop=LoopConfig(log_every=20),  # a CPU demo makes ~2 steps/s: a point every ~10 s
    )  # fmt: skip


def train_model(job: TrainJob, callbacks: list[Callback] | None = None) -> dict:
    """Train per `job`; return {run, run_dir, checkpoint, step, dataset}."""
    layout = DataLayout.at(job.data_root)
    if job.resume:  # the checkpoint's dataset version, not LATEST's
        checkpoint = _checkpoint_path(_run_dir(layout, job), job)
        recorded = load_checkpoint(checkpoint, mmap=True).get("dataset")
        job = replace(job, dataset=resume_version(layout, job.dataset, recorded, checkpoint))
    job = replace(job, dataset=resolve_version(layout, job.dataset))
    if job.nproc > 1:  # a dataset too small for the ranks says so once, before they start
        version = DatasetVersion(layout.dataset(job.dataset))
        version.batches_per_rank("train", job.train.batch_size, job.nproc)
    run_dir = _run_dir(layout, job)
    if job.nproc > 1 and world_from_env().size == 1:
        return _launch(job, run_dir)
    return _train(job, run_dir, callbacks or [])


def _run_dir(layout: DataLayout, job: TrainJob) -> Path:
    if job.resume:
        path = Path(job.resume)
        run_dir = path.parent if path.suffix == ".pt" else layout.runs / job.resume
    else:
        name = (
            job.run or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{job.dataset[:6]}-{secrets.token_hex(2)}"
        )
        run_dir = layout.runs / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _launch(job: TrainJob, run_dir: Path) -> dict:
    """Run this module under torchrun with one process per device; wait for it."""
    job = replace(job, run=job.run or run_dir.name)  # every rank must find the same run dir
    job_file = run_dir / "job.json"
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
    ]
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"distributed training failed (exit {completed.returncode}); see the log above"
        )
    return json.loads((run_dir / "result.json").read_text())


def _train(job: TrainJob, run_dir: Path, callbacks: list[Callback]) -> dict:
    world = world_from_env()
    accelerator = resolve_accelerator(job.device, world.local_rank)
    init_process_group(world, ddp_backend(accelerator.kind))
    try:
        state = load_checkpoint(_checkpoint_path(run_dir, job)) if job.resume else None
        if state is not None:  # the checkpoint's configs rebuild what it was trained with
            job = replace(job, **{k: _section(SECTIONS[k], state["job"][k]) for k in SECTIONS})
        version = DatasetVersion(DataLayout.at(job.data_root).dataset(job.dataset))
        if state is None:  # the model is built for the dataset's resolution
            job = replace(job, model=replace(job.model, resolution=version.resolution))
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
            )
            trainer = Trainer(job.train, job.model, accelerator, world)
            if state is not None:
                restore(trainer, batches, state)
            budget = _budget(job, version, world, trainer.step)
            if world.is_main:
                write_text(
                    run_dir / "options.json",
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
            "step": trainer.step,
            "dataset": job.dataset,
        }
        if world.is_main:
            write_text(run_dir / "result.json", json.dumps(result))
        return result
    finally:
        shutdown()


def _checkpoint_path(run_dir: Path, job: TrainJob) -> Path:
    path = Path(job.resume)
    return path if path.suffix == ".pt" else run_dir / "checkpoint.pt"


def _budget(job: TrainJob, version: DatasetVersion, world: World, step: int) -> Budget:
    """Total steps to reach (counting from step 0), or minutes from now."""
    steps = job.steps
    if job.epochs:
        per_step = job.train.batch_size * job.train.d_steps * world.size
        steps = math.ceil(job.epochs * version.samples("train") / per_step)
    if job.resume and steps and steps <= step:
        raise ValueError(f"the checkpoint is at step {step}; ask for more steps than that")
    return Budget(steps=steps, minutes=job.minutes)


def train_tracked(job: TrainJob, sample_every: int = 100) -> dict:
    """`train_model` tracked in MLflow, with fixed-noise sample grids: what the flow runs.

    Tracking runs in this process, so it covers single-process runs (`nproc` 1).
    """
    from gan.render import SampleGridCallback
    from tasks.track import MlflowCallback, pin_run, run_id_of

    if job.nproc > 1:
        raise ValueError("tracked training runs one process; use `msls train --nproc` untracked")
    job, run_dir = pin_run(job)
    grids = SampleGridCallback(run_dir, sample_every)
    with MlflowCallback(job, run_dir) as tracker:  # a crash marks the MLflow run FAILED
        result = train_model(job, [grids, tracker])
    return {**result, "mlflow_run_id": run_id_of(run_dir)}


train_task = task(name="train")(train_tracked)


def main() -> None:
    """Entry point of each torchrun process."""
    parser = argparse.ArgumentParser(description="one process of a distributed msls training run")
    parser.add_argument("--job", required=True, type=Path)
    args = parser.parse_args()
    job = TrainJob.from_dict(json.loads(args.job.read_text()))
    train_model(job)


if __name__ == "__main__":
    main()
