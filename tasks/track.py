"""DAG step: record a training run in MLflow (params, curves, tags, checkpoint, model).

The one place that talks to MLflow. `MlflowCallback` is handed to `train_model` and
sees the run through the loop's callbacks (rank 0 only); `log_artifacts` attaches
later files (renders, evaluation) to the same MLflow run. The store is the data root's
sqlite database (`<root>/mlflow.db`, artifacts in `<root>/mlartifacts`) unless
MLFLOW_TRACKING_URI says otherwise: MLflow's own default (`./mlflow.db` of whatever
directory a process happens to start in) would scatter runs.

One MLflow run per training run, in the experiment `msls-<dataset version>`. Its id
is kept in `<run_dir>/mlflow_run_id`, so `--resume` continues the same MLflow run and
its metric history. At the end the EMA generator is registered as `msls-dcgan`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # on by default; DO_NOT_TRACK is ignored

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from prefect import task

from gan.distributed import world_from_env
from gan.trainer import Trainer
from shards.atomic import write_text
from shards.dataset import resolve_version
from shards.layout import DataLayout, default_data_root
from shards.options import flat
from shards.provenance import code_version
from shards.rundir import RunDir
from tasks.jobs import TrainJob
from tasks.mlflow_store import ready_store
from tasks.registry import DEFAULT_ALIAS, promote, record_evaluation, register_generator

PARAM_LIMIT = 6000  # characters MLflow keeps of a param value
# MLflow 3.17's UI picks its GenAI or model-training view from its workflow-type switch
# (`?workflowType=machine_learning`, then remembered in the browser), not from this tag;
# the tag records the kind for MLflow versions and tools that read it.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
SYSTEM_METRICS_INTERVAL = 5.0  # seconds between CPU/memory/GPU samples

log = logging.getLogger("msls.track")


def tracking_uri(data_root: str | os.PathLike[str] | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the data root's own store (`sqlite_uri`).

    A sqlite store is created before this returns (`ready_store`): opened by two
    processes at once, a fresh one is corrupted by MLflow's own migration.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return ready_store(os.environ["MLFLOW_TRACKING_URI"])
    layout = DataLayout.at(data_root)
    layout.root.mkdir(parents=True, exist_ok=True)
    return ready_store(layout.mlflow_uri)


def client_for(data_root: str | os.PathLike[str] | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri(data_root), registry_uri=tracking_uri(data_root))


def experiment_id(client: MlflowClient, name: str, data_root: str | os.PathLike[str]) -> str:
    """The experiment `name`, created with artifacts under `<data root>/mlartifacts/<name>`.

    A local store (sqlite or file, the default) gets an explicit artifact location, or
    MLflow would use ./mlruns of whatever directory the process runs in; a tracking
    server (http) decides where its artifacts go.
    """
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not tracking_uri(data_root).startswith(("http://", "https://", "databricks")):
        location = (DataLayout.at(data_root).mlflow_artifacts.resolve() / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def params_of(job: TrainJob) -> dict[str, str]:
    """MLflow params: every option by its CLI/flow name, plus the dataset's resolution."""
    values = {**flat(job), "resolution": job.model.resolution}
    return {name: str(value)[:PARAM_LIMIT] for name, value in values.items()}


def prefect_flow_run_id() -> str | None:
    """The id of the Prefect flow run this process works for, or None outside a flow."""
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:  # no Prefect context (or an old Prefect) is not an error here
        return None
    return str(run_id) if run_id else None


def pin_run(job: TrainJob) -> tuple[TrainJob, Path]:
    """(job with its dataset version and run name fixed, its run directory).

    Callbacks that write into the run directory (this module's, the sample grids) must
    know it before `train_model` starts; a job pinned here trains into exactly it.
    """
    layout = DataLayout.at(job.data_root)
    job = replace(job, dataset=resolve_version(layout, job.dataset))
    run_dir = RunDir.for_run(layout, job.dataset, job.run, job.resume).path
    if not job.resume:
        job = replace(job, run=run_dir.name)
    return job, run_dir


def run_id_of(run_dir: str | os.PathLike[str]) -> str | None:
    """The MLflow run id recorded in a run directory, or None if it was never tracked."""
    path = RunDir(Path(run_dir)).mlflow_run_id
    return path.read_text().strip() or None if path.is_file() else None


class MlflowCallback:
    """Tracks one training run in MLflow; give it to `train_model` with a pinned job.

    Construction starts the MLflow run (or resumes the one recorded in the run
    directory) and logs every config value as a param. Pass it after any callback whose
    files it should upload at the end (e.g. SampleGridCallback's `samples/`). Used as a
    context manager, a run whose training raised is marked FAILED instead of left RUNNING:

        job, run_dir = pin_run(job)
        with MlflowCallback(job, run_dir) as tracker:
            train_model(job, [SampleGridCallback(run_dir, 500), tracker])
    """

    def __init__(
        self, job: TrainJob, run_dir: str | os.PathLike[str], rank: int | None = None
    ) -> None:
        rank = world_from_env().rank if rank is None else rank
        self.job, self.run_dir, self.active = job, Path(run_dir), rank == 0
        self.checkpoint: Path | None = None
        self._pending: list = []
        self._tagged = False
        self._monitor: SystemMetricsMonitor | None = None
        if not self.active:
            return
        self.client = client_for(job.data_root)
        self.run_id = run_id_of(self.run_dir)
        resumed = self.run_id is not None
        if self.run_id is None:
            experiment = experiment_id(self.client, f"msls-{job.dataset}", job.data_root)
            run = self.client.create_run(experiment, run_name=self.run_dir.name)
            self.run_id = run.info.run_id
            write_text(RunDir(self.run_dir).mlflow_run_id, self.run_id + "\n")
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self._log_params(params_of(job))
        tags = {"dataset_version": job.dataset, "code_version": code_version()}
        flow_run = prefect_flow_run_id()
        if flow_run:
            tags["prefect_flow_run_id"] = flow_run
        self._set_tags(tags)
        log.info("MLflow run %s (%s)", self.run_id, tracking_uri(job.data_root))
        if job.nproc == 1 or world_from_env().size > 1:  # the process that trains, not a launcher
            self._monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=SYSTEM_METRICS_INTERVAL,
                resume_logging=resumed,
                tracking_uri=tracking_uri(job.data_root),
            )
            self._monitor.start()

    def __enter__(self) -> MlflowCallback:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and self.active:
            self.end("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")

    def _log_params(self, params: dict[str, str]) -> None:
        """New params as params; on resume, values that changed (steps...) become tags.

        MLflow refuses to change a logged param, and a resumed run legitimately asks
        for more steps than the first session did.
        """
        logged = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for start in range(0, len(new), 100):  # MLflow's per-batch param limit
            self.client.log_batch(self.run_id, params=new[start : start + 100])
        changed = {f"resumed.{k}": v for k, v in params.items() if k in logged and logged[k] != v}
        self._set_tags(changed)

    def _set_tags(self, tags: dict[str, str]) -> None:
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _tag_trainer(self, trainer: Trainer) -> None:
        if not self._tagged:
            self._set_tags({"accelerator": trainer.acc.kind, "world_size": trainer.world.size})
            self._tagged = True

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self._tag_trainer(trainer)
        now = mlflow.utils.time.get_current_time_millis()
        batch = [  # `health` is a list of warnings: the report shows it, not a curve
            Metric(k, float(v), now, trainer.step)
            for k, v in metrics.items()
            if isinstance(v, int | float)
        ]
        self._pending.append(self.client.log_batch(self.run_id, metrics=batch, synchronous=False))

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.checkpoint = Path(path)  # uploaded once, at the end: checkpoints are large

    def on_end(self, trainer: Trainer) -> None:
        if not self.active:
            return
        self._tag_trainer(trainer)
        self.flush()
        if self.checkpoint is not None and self.checkpoint.is_file():
            self.client.log_artifact(self.run_id, str(self.checkpoint), "checkpoint")
        for name in ("options.json", "stats.jsonl"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if (self.run_dir / "samples").is_dir():
            self.client.log_artifacts(self.run_id, str(self.run_dir / "samples"), "samples")
        # the model as trained: the dataset set its resolution and (conditional) cities
        job = {**self.job.to_dict(), "model": trainer.model_config.as_dict()}
        state = {"ema": trainer.ema.state_dict(), "job": job}
        register_generator(self.client, self.run_id, state, self.job.dataset, trainer.step)
        self.end("FINISHED")

    def flush(self) -> None:
        """Wait for the metrics logged asynchronously so far."""
        pending, self._pending = self._pending, []
        for operations in pending:
            if operations is not None:
                operations.wait()

    def end(self, status: str = "FINISHED") -> None:
        """Close the MLflow run (call with "FAILED" when training raised)."""
        if self.active:
            self.flush()
            if self._monitor is not None:  # its last samples, before the run closes
                self._monitor.finish()
                self._monitor = None
            self.client.set_terminated(self.run_id, status=status)


def log_artifacts(
    run_id: str,
    paths: Iterable[str | os.PathLike[str]],
    artifact_path: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> None:
    """Attach files or directories (renders, evaluation) to an MLflow run, finished or not."""
    client = client_for(data_root if data_root is not None else default_data_root())
    for path in map(Path, paths):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"{path}: nothing to log to MLflow run {run_id}")


def log_evaluation(run_id: str, evaluation: dict, data_root: str | os.PathLike[str]) -> None:
    """The evaluation headline onto the run (metrics) and its registered version (tags)."""
    record_evaluation(client_for(data_root), run_id, evaluation)


def promote_run(
    run: str, alias: str = DEFAULT_ALIAS, data_root: str | os.PathLike[str] | None = None
) -> ModelVersion:
    """`models:/msls-dcgan@<alias>` -> the newest version of `run` (a run name or MLflow id)."""
    root = data_root if data_root is not None else default_data_root()
    run_id = run_id_of(DataLayout.at(root).runs / run) or run
    return promote(client_for(root), run_id, alias)


track_task = task(name="track")(log_artifacts)
evaluation_task = task(name="track-evaluation")(log_evaluation)
