"""A training run's directory under `<data root>/runs/`: what it holds, named once.

options.json    the resolved job that ran (every option), code version, accelerator
job.json        the job handed to each torchrun process (multi-process runs)
stats.jsonl     one line of metrics per logged step
checkpoint.pt   the latest complete checkpoint (atomic)
result.json     what the run returned (run, checkpoint, step, dataset)
mlflow_run_id   the MLflow run it is tracked as
samples/        fixed-noise grids over training
evaluation.json, report.html   the judgement (tasks/evaluate.py)
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from shards.layout import DataLayout


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def for_run(cls, layout: DataLayout, dataset: str, run: str = "", resume: str = "") -> RunDir:
        """The directory of a run: `resume`'s (a run name or a checkpoint path), `run`'s,
        or a new one named by time and dataset version; created if missing."""
        if resume:
            path = Path(resume)
            path = path.parent if path.suffix == ".pt" else layout.runs / resume
        else:
            stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{dataset[:6]}-{secrets.token_hex(2)}"
            path = layout.runs / (run or stamp)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def options(self) -> Path:
        return self.path / "options.json"

    @property
    def job(self) -> Path:
        return self.path / "job.json"

    @property
    def stats(self) -> Path:
        return self.path / "stats.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def mlflow_run_id(self) -> Path:
        return self.path / "mlflow_run_id"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"
