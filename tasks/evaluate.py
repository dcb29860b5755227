"""DAG step: judge a checkpoint against its dataset's val split.

`evaluate_checkpoint` is the plain function (the CLI and flows call it): it samples the
EMA generator, loads the val split and a sample of the train split, runs every metric
in `gan.metrics`' registry and writes `evaluation.json` (schema: docs/EVALUATION.md)
and a self-contained `report.html` beside the checkpoint. `evaluate_task` is the thin
Prefect wrapper.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from prefect import task
from torchvision.utils import make_grid

from gan.accelerators import resolve_accelerator
from gan.checkpoint import load_checkpoint
from gan.metrics import EvalInputs, check_inception_weights, compute_metric, metric_names
from gan.models import Discriminator, weights_init
from gan.sampling import city_labels, discriminator_from_state, generate, generator_from_state
from shards.atomic import write_text
from shards.cache import load_split
from shards.dataset import resolve_version
from shards.errors import DatasetError
from shards.geometry import centre_window
from shards.layout import DataLayout
from shards.tar import read_shard
from shards.version import DatasetVersion
from tasks.city_report import city_headline, city_parts

SCHEMA = 1
VAL_MIN_IMAGES = 4096  # val images loaded at least (probe, SWD reference), if the split has them
TRAIN_REFERENCE_IMAGES = 10_000  # train images loaded at least: memorisation's reference set
PROBE_MAX_IMAGES = 8192  # D features of 12,288 floats each: 400 MB at this many
GRID_IMAGES = 64
SEED = 0

log = logging.getLogger("msls.evaluate")


def evaluate_checkpoint(
    checkpoint: Path,
    data_root: Path,
    dataset: str | None = None,
    inception_weights: Path | None = None,
    n_samples: int = 2048,
    out_dir: Path | None = None,
    device: str = "auto",
    workers: int = 0,
) -> dict:
    """Evaluate `checkpoint` on `dataset` (default: the one it was trained on).

    Writes evaluation.json and report.html into `out_dir` (default: the checkpoint's
    run directory) and returns the evaluation dict. FID and KID are computed only with
    a local `inception_weights` file; nothing is downloaded. `workers`: shard decoding
    processes (0: cores, at most 8).
    """
    checkpoint = Path(checkpoint)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    if inception_weights is not None:  # bad input fails now, not after minutes of work
        check_inception_weights(Path(inception_weights))
    accelerator = resolve_accelerator(device)
    state = load_checkpoint(checkpoint)
    layout = DataLayout.at(data_root)
    version = DatasetVersion(
        layout.dataset(resolve_version(layout, dataset or state.get("dataset", "latest")))
    )
    generator, config = generator_from_state(state, accelerator.device)
    if config.resolution != version.resolution:
        raise DatasetError(
            f"{version.path}: {version.resolution} px images but the checkpoint makes "
            f"{config.resolution} px; evaluate on a dataset of the checkpoint's resolution"
        )
    discriminator, _ = discriminator_from_state(state, accelerator.device)
    val, val_labels, val_groups = load_images(
        version, "val", max(n_samples, VAL_MIN_IMAGES), workers
    )
    train, train_labels, _ = load_images(
        version, "train", max(n_samples, TRAIN_REFERENCE_IMAGES), workers
    )
    log.info("evaluating on %d val and %d train images", len(val), len(train))
    inputs = EvalInputs(  # a conditional G draws every city in turn
        generated=generate(generator, n_samples, SEED, accelerator.device),
        val=val,
        train=train,
        val_labels=val_labels,
        train_labels=train_labels,
        generated_labels=city_labels(config, n_samples),
        city_names=tuple(version.cities),
        val_groups=val_groups,
        discriminator=discriminator,
        random_discriminator=_random_discriminator(config, accelerator.device),
        inception_weights=Path(inception_weights) if inception_weights else None,
        device=accelerator.device,
        seed=SEED,
    )
    metrics = {}
    for name in metric_names():
        log.info("metric %s", name)
        metrics[name] = compute_metric(name, _for_metric(name, inputs))
    evaluation = {
        "schema": SCHEMA,
        "checkpoint": str(checkpoint),
        "step": int(state.get("step", 0)),
        "dataset": version.version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n_samples": n_samples,
        "seed": SEED,
        "device": accelerator.kind,
        "model": config.as_dict(),
        "data": {
            "resolution": version.resolution,
            "cities": version.cities,
            "val_images": len(val),
            "train_images": len(train),
        },
        "metrics": metrics,
        "headline": headline(metrics),
    }
    out_dir = Path(out_dir) if out_dir is not None else checkpoint.parent
    write_text(out_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    write_text(out_dir / "report.html", render_report(evaluation, inputs.generated, val))
    return evaluation


evaluate_task = task(name="evaluate")(evaluate_checkpoint)


# ---------------------------------------------------------------- inputs


def load_images(
    version: DatasetVersion, split: str, wanted: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Centre windows uint8 [N,3,R,R], city int64 [N] and sequence ids int64 [N] (or None)
    of every k-th shard of `split`, k chosen so that about `wanted` images come back."""
    shards = version.shards(split)
    total = version.samples(split)
    if not shards or total == 0:
        raise DatasetError(f"{version.path}: the {split} split is empty; nothing to evaluate on")
    stride = max(1, min(len(shards), total // max(wanted, 1)))
    strips, labels = load_split(version, split, world_size=stride, workers=workers)
    images = centre_window(strips).contiguous()  # the evaluation image
    return images, labels, _sequence_ids(version, shards[::stride], len(images))


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


# ---------------------------------------------------------------- the verdicts


def headline(metrics: dict) -> list[list]:
    """[[metric, value, reference, verdict], ...]: one row per metric, for people."""
    rows = []
    swd = metrics.get("swd_val", {})
    if swd.get("computed"):
        ratio = swd["ratio"] or float("inf")
        verdict = (
            "near the real floor" if ratio <= 1.5 else "fair" if ratio <= 3 else "far from real"
        )
        rows.append(["swd_val", swd["mean"], swd["floor_mean"], f"{verdict} ({ratio:.1f}x floor)"])
    for name in ("fid_val", "kid_val"):
        entry = metrics.get(name, {})
        if entry.get("computed"):
            rows.append([name, entry["value"], None, "lower is better; compare runs"])
        else:
            rows.append([name, None, None, entry.get("reason", "not computed")])
    probe = metrics.get("probe_city", {})
    if probe.get("computed"):
        random = probe.get("random_d_accuracy")
        margin = max(0.02, 2 * (0.25 / probe["test_images"]) ** 0.5)  # ~2 binomial std errors
        better = random is not None and probe["accuracy"] >= random + margin
        verdict = "beats a random D" if better else "no better than a random D"
        rows.append(["probe_city", probe["accuracy"], random, verdict])
    memo = metrics.get("memorisation", {})
    if memo.get("computed"):
        ratio, copies = memo["ratio"], memo["fraction_below_val_p1"]
        collapsed = (metrics.get("diversity", {}).get("ratio") or 1.0) < 0.5
        if collapsed:  # near-identical, blurry samples sit near every image's mean
            verdict = "not judged: samples collapsed (see diversity)"
        elif copies > 0.05 or (ratio is not None and ratio < 0.5):
            verdict = f"possible copies ({copies:.0%} closer than val's 1st pct)"
        elif ratio is not None and ratio > 1.5:
            verdict = "far from the training data (under-fit?)"
        else:
            verdict = "no sign of copying"
        rows.append(["memorisation", ratio, 1.0, verdict])
    div = metrics.get("diversity", {})
    if div.get("computed"):
        ratio = div["ratio"] or 0.0
        verdict = "mode collapse" if ratio < 0.5 else "low diversity" if ratio < 0.8 else "ok"
        rows.append(["diversity", div["ratio"], 1.0, verdict])
    return rows + city_headline(metrics)


def summary_markdown(evaluation: dict) -> str:
    """The headline as a Markdown table (for a Prefect artifact or a PR comment)."""
    lines = [
        f"**{evaluation['checkpoint']}** (step {evaluation['step']}, dataset "
        f"{evaluation['dataset']})",
        "",
        "| metric | ours | reference | verdict |",
        "|---|---|---|---|",
    ]
    for name, value, reference, verdict in evaluation["headline"]:
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(reference)} | {verdict} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- report.html


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _png_grid(images: torch.Tensor) -> str:
    """uint8 [N,3,R,R] -> a data: URI of an 8-wide PNG grid."""
    grid = make_grid(images[:GRID_IMAGES], nrow=8, padding=2, pad_value=255)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_GOOD = ("near the real floor", "beats", "no sign", "ok", "recognised as asked")
_BAD = ("far from real", "collapse", "possible copies", "no better", "low diversity", "not recog")


def _cell(value) -> str:
    text = html.escape(_fmt(value))
    if isinstance(value, str):
        tone = "good" if value.startswith(_GOOD) else "bad" if any(b in value for b in _BAD) else ""
        return f"<td class='{tone}'>{text}</td>" if tone else f"<td>{text}</td>"
    return f"<td>{text}</td>"


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers) if any(headers) else ""
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;
color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}
.sub{color:#5b6475;margin:0 0 18px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:8px 18px;
background:#fff;border:1px solid #dfe2e8;border-radius:8px;padding:14px 18px}
.facts div{overflow-wrap:anywhere}.facts b{display:block;font-size:12px;color:#5b6475;
font-weight:600;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dfe2e8;
border-radius:8px;overflow:hidden}
th,td{padding:7px 12px;text-align:left;border-bottom:1px solid #eceef2}
th{background:#eef0f4;font-size:13px;color:#3b4352}
td:nth-child(2),td:nth-child(3){font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:none}
.grids{display:grid;grid-template-columns:1fr 1fr;gap:18px}
figure{margin:0;background:#fff;border:1px solid #dfe2e8;border-radius:8px;padding:10px}
figure img{width:100%;image-rendering:pixelated;display:block}
figcaption{font-size:13px;color:#5b6475;margin-top:6px}
.note{color:#5b6475;font-size:13px}
td.good{color:#17673a;font-weight:600}td.bad{color:#a8281e;font-weight:600}
figure table{border:none}figure td{padding:5px 8px;font-size:13px;overflow-wrap:anywhere}
figure td:first-child{white-space:nowrap;width:1%;color:#3b4352}
figcaption b{color:#1d2330;font-size:14px}
"""


def render_report(evaluation: dict, generated: torch.Tensor, val: torch.Tensor) -> str:
    """report.html: one file, CSS inline and images as data: URIs, so it opens offline."""
    m = evaluation["metrics"]
    facts = {
        "checkpoint": evaluation["checkpoint"],
        "step": evaluation["step"],
        "dataset": evaluation["dataset"],
        "created": evaluation["created"],
        "samples": evaluation["n_samples"],
        "val / train images": f"{evaluation['data']['val_images']} / "
        f"{evaluation['data']['train_images']}",
        "model": ", ".join(f"{k}={v}" for k, v in evaluation["model"].items()),
        "device": evaluation["device"],
    }
    parts = [
        "<h1>Evaluation</h1>",
        f"<p class=sub>{html.escape(Path(evaluation['checkpoint']).parent.name)} · "
        f"schema {evaluation['schema']}</p>",
        "<div class=facts>"
        + "".join(
            f"<div><b>{html.escape(k)}</b>{html.escape(str(v))}</div>" for k, v in facts.items()
        )
        + "</div>",
        "<h2>Headline</h2>",
        _table(["metric", "ours", "reference / floor", "verdict"], evaluation["headline"]),
    ]
    swd = m.get("swd_val", {})
    if swd.get("computed"):
        rows = [[f"{r} px", swd["levels"][r], swd["floor_levels"][r]] for r in swd["levels"]]
        rows.append(["mean", swd["mean"], swd["floor_mean"]])
        parts += [
            "<h2>Sliced Wasserstein distance (x1e3) per pyramid level</h2>",
            _table(["level", "generated vs val", "train vs val (floor)"], rows),
            f"<p class=note>{swd['images']} images per set; lower is better; the floor is "
            "what two real samples score.</p>",
        ]
    probe = m.get("probe_city", {})
    if probe.get("computed"):
        rows = [
            ["trained D", probe["accuracy"]],
            ["random D", probe.get("random_d_accuracy")],
            ["chance (1 / cities)", probe["chance"]],
            ["majority city", probe["majority"]],
        ]
        parts += [
            "<h2>Linear probe: city from D's features</h2>",
            _table(["features", "test accuracy"], rows),
            f"<p class=note>{probe['classes']} cities; split by {probe['split']}: "
            f"{probe['train_images']} probe-train / {probe['test_images']} probe-test val images."
            "</p>",
        ]
    parts += city_parts(m, _table)
    details = "".join(
        f"<figure><figcaption><b>{name}</b></figcaption>"
        + _table(["", ""], [[k, v] for k, v in m[name].items() if k != "computed"])
        + "</figure>"
        for name in ("memorisation", "diversity", "fid_val", "kid_val")
        if name in m
    )
    parts += [
        "<h2>Details</h2>",
        f"<div class=grids>{details}</div>",
        "<h2>Samples</h2>",
        "<div class=grids>"
        f"<figure><img alt='generated samples' src='{_png_grid(generated)}'>"
        f"<figcaption>{min(GRID_IMAGES, len(generated))} generated (EMA generator, seed "
        f"{evaluation['seed']})</figcaption></figure>"
        f"<figure><img alt='real val images' src='{_png_grid(val)}'>"
        f"<figcaption>{min(GRID_IMAGES, len(val))} real val images (centre windows)"
        "</figcaption></figure></div>",
    ]
    title = html.escape(f"Evaluation · step {evaluation['step']} · {evaluation['dataset'][:12]}")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title><style>{_CSS}</style></head><body><main>"
        + "\n".join(parts)
        + "</main></body></html>\n"
    )
