"""The msls-train flow: (prepare) -> train -> render -> evaluate -> track.

Wiring only. Its parameters are the options of `tasks.jobs.PipelineJob` (derived by
flows/options.py) plus a preset name: `prefect deployment run msls-train/msls-train
-p preset=gpu -p minutes=30` sets just those two. With a `source`, the prepare flow runs
first as a subflow (a no-op when the version for these options exists); with source
"" the given dataset version is used as it is. Training logs to MLflow as it goes;
renders and the evaluation are attached to the same MLflow run, and the headline table
becomes a Prefect artifact.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.options import resolve, with_options
from flows.prepare import prepare
from flows.slots import accelerator_slot
from shards.layout import DataLayout
from shards.options import flat
from shards.rundir import RunDir
from tasks.evaluate import evaluate_task
from tasks.jobs import PipelineJob
from tasks.presets import PRESET_NAMES
from tasks.render import render_task
from tasks.track import evaluation_task, track_task
from tasks.train import train_task
from tasks.verdicts import summary_markdown


@flow(name="msls-train")
@with_options(PipelineJob)
def train(preset: str = "auto", data_root: str | None = None, **options) -> dict:
    """Train and judge a DCGAN; returns the dataset version, MLflow run id and paths.

    Args:
        preset: Named configuration under the options given (auto, cpu, gpu, dcgan).
        data_root: Data root; default $MSLS_DATA, else ./data.
    """
    pipeline = _pipeline(preset, data_root, options)
    job, root = pipeline.job, pipeline.job.data_root
    if pipeline.prepare.source:
        prepared = prepare(data_root=root, **flat(pipeline.prepare))
        job = replace(job, dataset=prepared["version"])
    with accelerator_slot(job.device):  # one training run per accelerator (flows/slots.py)
        trained = train_task(job)
    checkpoint, run_dir = Path(trained["checkpoint"]), RunDir(Path(trained["run_dir"]))
    renders = render_task(checkpoint, root, device=job.device)
    evaluation = evaluate_task(checkpoint, Path(root), None, pipeline.evaluation, device=job.device)
    outputs = [*renders, run_dir.evaluation, run_dir.report]
    track_task(trained["mlflow_run_id"], outputs, None, root)
    evaluation_task(trained["mlflow_run_id"], evaluation, root)
    create_markdown_artifact(
        key="msls-train-summary",
        markdown=summary_markdown(evaluation)
        + f"\n\nMLflow run `{trained['mlflow_run_id']}`; report: `{run_dir.report}`",
        description="msls-train evaluation",
    )
    return {
        "dataset": trained["dataset"],
        "mlflow_run_id": trained["mlflow_run_id"],
        "run": trained["run"],
        "checkpoint": str(checkpoint),
        "report": str(run_dir.report),
    }


def _pipeline(preset: str, data_root: str | None, options: dict) -> PipelineJob:
    """The resolved job, its data root set (one-line ValueError before any work)."""
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    pipeline = resolve(PipelineJob, options, preset)
    root = str(DataLayout.at(data_root).root)
    return replace(
        pipeline,
        prepare=replace(pipeline.prepare, data_root=root),
        job=replace(pipeline.job, data_root=root),
    )
