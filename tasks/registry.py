"""The model registry: the EMA generator as MLflow model `msls-dcgan`, judged and promoted.

`register_generator` logs the generator as an MLflow 3 LoggedModel of its training run
(a pyfunc from code, `tasks/served_model.py`, with the weights as an msls checkpoint)
and registers it as a new version of `msls-dcgan`. `record_evaluation` puts the
evaluation headline on that version (tags) and on the run (metrics), and `promote`
points an alias (default `champion`) at a run's version, so that

    mlflow.pyfunc.load_model("models:/msls-dcgan@champion")
    mlflow models serve -m models:/msls-dcgan@champion --env-manager local -h 127.0.0.1

serve the promoted generator (`--env-manager local`: the current Python environment,
nothing is built at run time).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

import gan
import shards
from gan.checkpoint import save_checkpoint
from shards.provenance import code_version
from tasks import served_model

MODEL_NAME = "msls-dcgan"
DEFAULT_ALIAS = "champion"
# What the served model imports; pinned to this environment's versions.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow")


def register_generator(
    client: MlflowClient, run_id: str, state: dict[str, Any], dataset: str, step: int
) -> ModelVersion:
    """Log `state` (the EMA weights and the job) as a pyfunc model of `run_id`; register it.

    The version carries tags `dataset_version` and `step`; its source is the LoggedModel's artifact
    location, whose artifacts are MLmodel, the model code, `gan/` and
    `shards/` (so any environment with the REQUIREMENTS can load it), and generator.pt.
    """
    run = client.get_run(run_id)
    tags = {"dataset_version": dataset, "step": str(step)}
    logged = client.create_logged_model(
        run.info.experiment_id, name="generator", source_run_id=run_id, tags=tags
    )
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"step": step, "dataset": dataset, "code_version": code_version()}
        weights = save_checkpoint(Path(tmp) / "generator.pt", {**state, **extra})
        model_dir = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(model_dir),
            python_model=served_model.__file__,
            artifacts={served_model.ARTIFACT: str(weights)},
            code_paths=[str(Path(gan.__file__).parent), str(Path(shards.__file__).parent)],
            signature=served_model.SIGNATURE,
            input_example=served_model.INPUT_EXAMPLE,
            pip_requirements=requirements(),
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            ),
        )
        for cache in list(model_dir.rglob("__pycache__")):
            shutil.rmtree(cache)
        client.log_model_artifacts(logged.model_id, str(model_dir))
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    try:
        client.create_registered_model(MODEL_NAME)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # The source is the LoggedModel's artifact location, not `models:/<model id>`: the sqlite
    # registry resolves such a URI through the global tracking URI, not this client's.
    return client.create_model_version(
        MODEL_NAME,
        logged.artifact_location,
        run_id=run_id,
        tags={**tags, "code_version": code_version()},
        description=f"EMA generator of {run.info.run_name} at step {step}",
        model_id=logged.model_id,
    )


def requirements() -> list[str]:
    """pip requirements of the served model, pinned to what this environment runs."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]


def run_version(client: MlflowClient, run_id: str) -> ModelVersion:
    """The newest `msls-dcgan` version registered by an MLflow run; ValueError if none."""
    versions = client.search_model_versions(f"name='{MODEL_NAME}' and run_id='{run_id}'")
    if not versions:
        raise ValueError(f"MLflow run {run_id} registered no {MODEL_NAME} version; train it first")
    return max(versions, key=lambda v: int(v.version))


def record_evaluation(client: MlflowClient, run_id: str, evaluation: dict) -> ModelVersion:
    """The evaluation headline as tags of the run's newest version and metrics of the run.

    Tags `eval.<metric>` (the value) and `eval.<metric>.verdict` let the registry be
    compared without opening reports; run metrics `eval.<metric>` at the evaluated step
    put the numbers in the runs table and charts. Metrics not computed get only a verdict.
    """
    version = run_version(client, run_id)
    for name, value, _reference, verdict in evaluation["headline"]:
        if value is not None:
            client.set_model_version_tag(
                MODEL_NAME, version.version, f"eval.{name}", f"{value:.6g}"
            )
            client.log_metric(run_id, f"eval.{name}", float(value), step=evaluation["step"])
        client.set_model_version_tag(MODEL_NAME, version.version, f"eval.{name}.verdict", verdict)
    return client.get_model_version(MODEL_NAME, version.version)


def promote(client: MlflowClient, run_id: str, alias: str = DEFAULT_ALIAS) -> ModelVersion:
    """Point `models:/msls-dcgan@<alias>` at the newest version a run registered."""
    if not alias or (alias[0] == "v" and alias[1:].isdigit()):
        raise ValueError(f"alias {alias!r}: give a name such as 'champion' (v<N> is reserved)")
    version = run_version(client, run_id)
    client.set_registered_model_alias(MODEL_NAME, alias, version.version)
    return client.get_model_version(MODEL_NAME, version.version)
