"""Which dataset version a training job reads: decided once, before anything starts.

A new run reads `--dataset` (LATEST by default). A resumed run reads the version its
checkpoint records, whatever LATEST is now (shards.dataset.resume_version), and an
explicit different `--dataset` is refused. A version too small to fill one batch on
each of `nproc` ranks is refused here too, in one line, before torchrun starts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gan.checkpoint import load_checkpoint
from shards.dataset import resolve_version, resume_version
from shards.layout import DataLayout
from shards.rundir import RunDir
from shards.version import DatasetVersion
from tasks.jobs import TrainJob


def pin_dataset(job: TrainJob) -> TrainJob:
    """`job` with `dataset` a concrete version id (idempotent). Raises DatasetError."""
    layout = DataLayout.at(job.data_root)
    if job.resume:
        checkpoint = checkpoint_of(layout, job)
        recorded = load_checkpoint(checkpoint, mmap=True).get("dataset")
        job = replace(job, dataset=resume_version(layout, job.dataset, recorded, checkpoint))
    job = replace(job, dataset=resolve_version(layout, job.dataset))
    if job.nproc > 1:
        version = DatasetVersion(layout.dataset(job.dataset))
        version.batches_per_rank("train", job.train.batch_size, job.nproc)
    return job


def checkpoint_of(layout: DataLayout, job: TrainJob) -> Path:
    """The checkpoint a resuming `job` continues: `resume` itself if it names a .pt file,
    else the checkpoint.pt of the run it names."""
    path = Path(job.resume)
    return path if path.suffix == ".pt" else RunDir(layout.runs / job.resume).checkpoint
