"""DAG step: judge a checkpoint against its dataset's val split.

`evaluate_checkpoint` is the plain function (the CLI and flows call it): it samples the
EMA generator, loads the val strips and a sample of the train strips, runs every metric
in `gan.metrics`' registry and writes `evaluation.json` (schema: docs/EVALUATION.md),
each result's line in `metric-<name>.jsonl` and a self-contained `report.html` (with the
run's training health, tasks/report.py) beside the checkpoint. `evaluate_task` is the
thin Prefect wrapper.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import torch
from prefect import task

from gan.accelerators import resolve_accelerator
from gan.checkpoint import load_checkpoint
from gan.metrics import EvalConfig, EvalInputs, append_result, compute_metric, metric_names
from gan.metrics.inception import check_inception_weights
from gan.models import Discriminator, weights_init
from gan.sampling import (
    discriminator_from_state,
    evaluation_labels,
    generate,
    generator_from_state,
)
from shards.atomic import write_text
from shards.cache import load_split
from shards.conditions import label_city, with_night
from shards.dataset import resolve_version
from shards.errors import DatasetError
from shards.layout import DataLayout
from shards.tar import read_shard
from shards.version import DatasetVersion
from tasks.report import render_report
from tasks.verdicts import headline, training_health

SCHEMA = 2
VAL_MIN_IMAGES = 4096  # val strips loaded at least (probe, window draws), if the split has them
TRAIN_REFERENCE_IMAGES = 10_000  # train strips loaded at least: floor and memorisation
PROBE_MAX_IMAGES = 8192  # D features of 12,288 floats each: 400 MB at this many
SEED = 0

log = logging.getLogger("msls.evaluate")


def evaluate_checkpoint(
    checkpoint: Path,
    data_root: Path,
    dataset: str | None = None,
    config: EvalConfig | None = None,
    out_dir: Path | None = None,
    device: str = "auto",
    workers: int = 0,
) -> dict:
    """Evaluate `checkpoint` on `dataset` (default: the one it was trained on), on `device`.

    `config` defaults to EvalConfig(). Writes evaluation.json, metric-<name>.jsonl and
    report.html into `out_dir` (default: the checkpoint's run directory) and returns the
    evaluation dict. FID and KID are computed only with a local
    `config.inception_weights` file; nothing is downloaded.
    `workers`: shard decoding processes (0: cores, at most 8).
    """
    checkpoint = Path(checkpoint)
    config = config or EvalConfig()
    weights = Path(config.inception_weights) if config.inception_weights else None
    if weights is not None:  # bad input fails now, not after minutes of work
        check_inception_weights(weights)
    accelerator = resolve_accelerator(device)
    state = load_checkpoint(checkpoint)
    layout = DataLayout.at(data_root)
    version = DatasetVersion(
        layout.dataset(resolve_version(layout, dataset or state.get("dataset", "latest")))
    )
    generator, model = generator_from_state(state, accelerator.device)
    if model.resolution != version.resolution:
        raise DatasetError(
            f"{version.path}: {version.resolution} px images but the checkpoint makes "
            f"{model.resolution} px; evaluate on a dataset of the checkpoint's resolution"
        )
    out_dir = Path(out_dir) if out_dir is not None else checkpoint.parent
    if version.samples("val") == 0:  # a train-only version (--val-fraction 0): say so, succeed
        return _skipped(checkpoint, state, version, out_dir)
    discriminator, _ = discriminator_from_state(state, accelerator.device)
    condition = model.conditional
    val, val_classes, val_groups = load_strips(version, "val", VAL_MIN_IMAGES, workers, condition)
    val_labels = label_city(val_classes, condition)
    shares = night_share(val_classes, len(version.cities)) if with_night(condition) else None
    generated_classes = evaluation_labels(model, config.samples, shares)
    train, train_labels, _ = load_strips(version, "train", TRAIN_REFERENCE_IMAGES, workers)
    log.info("evaluating on %d val and %d train strips", len(val), len(train))
    inputs = EvalInputs(  # a conditional G draws every city in turn
        generated=generate(
            generator, config.samples, SEED, accelerator.device, labels=generated_classes
        ),
        val=val,
        train=train,
        val_labels=val_labels,
        train_labels=train_labels,
        generated_labels=(
            None if generated_classes is None else label_city(generated_classes, condition)
        ),
        city_names=tuple(version.cities),
        val_groups=val_groups,
        discriminator=discriminator,
        random_discriminator=_random_discriminator(model, accelerator.device),
        inception_weights=weights,
        device=accelerator.device,
        seed=SEED,
    )
    step = int(state.get("step", 0))
    metrics = {}
    for name in metric_names(config.samples):
        log.info("metric %s", name)
        metrics[name] = compute_metric(name, _for_metric(name, inputs))
        append_result(out_dir, name, metrics[name], str(checkpoint), step)
    training = training_health(checkpoint.parent, step)
    evaluation = {
        "schema": SCHEMA,
        "checkpoint": str(checkpoint),
        "step": step,
        "dataset": version.version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n_samples": config.samples,
        "seed": SEED,
        "device": accelerator.kind,
        "model": model.as_dict(),
        "data": {
            "resolution": version.resolution,
            "cities": version.cities,
            "val_images": len(val),
            "train_images": len(train),
        },
        "metrics": metrics,
        "training": training,
        "headline": headline(metrics, training),
    }
    write_text(out_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    report = render_report(evaluation, inputs.generated, inputs.val_windows())
    write_text(out_dir / "report.html", report)
    return evaluation


def _skipped(checkpoint: Path, state: dict, version: DatasetVersion, out_dir: Path) -> dict:
    """No val split, and every metric here compares with val: evaluation.json says why."""
    reason = f"dataset {version.version} has no val split (--val-fraction 0): evaluation skipped"
    log.warning("%s", reason)
    evaluation = {"schema": SCHEMA, "checkpoint": str(checkpoint), "step": state.get("step", 0),
                  "dataset": version.version, "skipped": reason, "metrics": {},
                  "headline": []}  # fmt: skip
    write_text(out_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    write_text(out_dir / "report.html", f"<!doctype html><p>{html.escape(reason)}</p>\n")
    return evaluation


evaluate_task = task(name="evaluate")(evaluate_checkpoint)


# ---------------------------------------------------------------- inputs


def load_strips(
    version: DatasetVersion, split: str, wanted: int, workers: int, condition: str = ""
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Strips uint8 [N,3,R,W], labels int64 [N] (city indices, or the classes of
    `condition`: shards/conditions.py) and sequence ids int64 [N] (or None) of every k-th
    shard of `split`, k chosen so that at least about `wanted` come back."""
    shards = version.shards(split)
    total = version.samples(split)
    if not shards or total == 0:
        raise DatasetError(f"{version.path}: the {split} split is empty; nothing to evaluate on")
    stride = max(1, min(len(shards), total // max(wanted, 1)))
    picked = shards[::stride]
    strips, labels = load_split(version, split, shards=picked, workers=workers, condition=condition)
    return strips, labels, _sequence_ids(version, picked, len(strips))


def night_share(classes: torch.Tensor, cities: int) -> torch.Tensor:
    """float [cities]: the share of night images per city among "city,night" `classes`
    (int64 [N], 2 * city + night); zero for a city without images."""
    counts = torch.bincount(classes, minlength=2 * cities).reshape(cities, 2).double()
    return (counts[:, 1] / counts.sum(1).clamp_min(1)).float()


def _sequence_ids(version: DatasetVersion, shards: list[str], n: int) -> torch.Tensor | None:
    """Sequence id per loaded sample (shard order), from the manifest; None if unavailable."""
    manifest = version.path / "manifest.parquet"
    if not manifest.is_file():
        return None
    table = pq.read_table(manifest, columns=["key", "sequence_key"])
    sequence_of = dict(
        zip(table.column("key").to_pylist(), table.column("sequence_key").to_pylist())
    )
    keys = [key for shard in shards for key, _, _ in read_shard(version.url(shard))]
    if len(keys) != n or any(key not in sequence_of for key in keys):
        return None
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(sequence_of[k], len(ids)) for k in keys], dtype=torch.int64)


def _random_discriminator(config, device: torch.device) -> Discriminator:
    """A DCGAN-initialised D of the same architecture: the probe's baseline."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Discriminator(config)
        model.apply(weights_init)
    return model.to(device).eval().requires_grad_(False)


def _for_metric(name: str, inputs: EvalInputs) -> EvalInputs:
    """The probe sees at most PROBE_MAX_IMAGES val images (a seeded subset)."""
    if name != "probe_city" or len(inputs.val) <= PROBE_MAX_IMAGES:
        return inputs
    keep = torch.randperm(len(inputs.val), generator=torch.Generator().manual_seed(SEED))
    keep = keep[:PROBE_MAX_IMAGES].sort().values
    groups = inputs.val_groups[keep] if inputs.val_groups is not None else None
    return EvalInputs(
        **{**vars(inputs), "val": inputs.val[keep], "val_labels": inputs.val_labels[keep],
           "val_groups": groups},
    )  # fmt: skip
