"""report.html: one self-contained page (CSS inline, images as data: URIs) that opens offline.

Sections: facts, the headline, SWD per pyramid level with the floor's spread, the probe,
training health (what the budget bought, D's grip on G, sample diversity over the run,
the warnings the run raised), the other metrics' numbers, and generated samples next to
the real windows they are judged against.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import torch

from gan.images import image_grid
from tasks.city_report import city_parts
from tasks.verdicts import format_value

GRID_IMAGES = 64
HEALTH_ROWS = 12  # stats lines shown, evenly spaced over the run
_GOOD = ("as good as real", "near real", "beats", "no sign", "ok", "healthy", "recognised as")
_BAD = ("far from", "collapse", "possible copies", "no better", "low diversity", "overpowering",
        "not recognised", "than real (")  # fmt: skip
_HEALTH_COLUMNS = {
    "loss_d": "loss D",
    "loss_g": "loss G",
    "logit_gap": "logit gap (real - fake)",
    "real_pos": "real logits > 0",
    "ada_p": "ADA p",
    "diversity": "sample diversity",
    "real_diversity": "real diversity",
}


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
.warn{background:#fff4e5;border:1px solid #f0c27b;border-radius:8px;padding:8px 14px;
margin:6px 0}
"""


def render_report(evaluation: dict, generated: torch.Tensor, real: torch.Tensor) -> str:
    """The page for `evaluation` (tasks.evaluate's dict), with grids of uint8 [N,3,R,R]
    generated images and the real windows they were scored against."""
    metrics = evaluation["metrics"]
    parts = [
        "<h1>Evaluation</h1>",
        f"<p class=sub>{html.escape(Path(evaluation['checkpoint']).parent.name)} · "
        f"schema {evaluation['schema']}</p>",
        _facts(evaluation),
        "<h2>Headline</h2>",
        _table(["metric", "ours", "reference / floor", "verdict"], evaluation["headline"]),
        *_swd_section(metrics),
        *_probe_section(metrics.get("probe_city", {})),
        *city_parts(metrics, _table),
        *_health_section(evaluation.get("training") or {}),
        *_details_section(metrics),
        *_samples_section(evaluation, generated, real),
    ]
    title = html.escape(f"Evaluation · step {evaluation['step']} · {evaluation['dataset'][:12]}")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title><style>{_CSS}</style></head><body><main>"
        + "\n".join(parts)
        + "</main></body></html>\n"
    )


def _facts(evaluation: dict) -> str:
    facts = {
        "checkpoint": evaluation["checkpoint"],
        "step": evaluation["step"],
        "dataset": evaluation["dataset"],
        "created": evaluation["created"],
        "samples": evaluation["n_samples"],
        "val / train strips": f"{evaluation['data']['val_images']} / "
        f"{evaluation['data']['train_images']}",
        "model": ", ".join(f"{k}={v}" for k, v in evaluation["model"].items()),
        "device": evaluation["device"],
    }
    cells = "".join(
        f"<div><b>{html.escape(k)}</b>{html.escape(str(v))}</div>" for k, v in facts.items()
    )
    return f"<div class=facts>{cells}</div>"


def _swd_section(metrics: dict) -> list[str]:
    name = next((n for n in metrics if n.startswith("swd")), None)
    swd = metrics.get(name, {})
    if not swd.get("computed"):
        return []
    rows = [[f"{r} px", swd["levels"][r], swd["floor_levels"][r]] for r in swd["levels"]]
    rows.append(["mean", swd["mean"], swd["floor_mean"]])
    draws = ", ".join(f"{f:.2f}" for f in swd["floor_draws"])
    return [
        f"<h2>Sliced Wasserstein distance (x1e3) per pyramid level: {html.escape(name)}</h2>",
        _table(["level", "generated vs val windows", "train vs val windows (floor)"], rows),
        f"<p class=note>{swd['images']} images per set, each real set drawn as training "
        f"draws (random window of a strip, mirrored half the time), means over {swd['draws']} "
        f"draws. Floor {swd['floor_mean']:.2f} ± {swd['floor_std']:.2f} (draws: {draws}); "
        f"ours ± {swd['std']:.2f}. A generator as good as the train split scores within two "
        f"of the floor's standard deviations: ratio <= {swd['ratio_as_real']:.2f}. Lower is "
        "better; compare runs only at the same image count.</p>",
    ]


def _probe_section(probe: dict) -> list[str]:
    if not probe.get("computed"):
        return []
    rows = [
        ["trained D", probe["accuracy"]],
        ["random D", probe.get("random_d_accuracy")],
        ["chance (1 / cities)", probe["chance"]],
        ["majority city", probe["majority"]],
    ]
    return [
        "<h2>Linear probe: city from D's features</h2>",
        _table(["features", "test accuracy"], rows),
        f"<p class=note>{probe['classes']} cities; split by {probe['split']}: "
        f"{probe['train_images']} probe-train / {probe['test_images']} probe-test val images.</p>",
    ]


def _health_section(training: dict) -> list[str]:
    """What the budget bought, the health series (evenly spaced rows) and the warnings."""
    if training.get("steps") is None:
        return []
    bought = f"{training['steps']} generator steps"
    if training.get("seconds") is not None:
        bought += f" in {training['seconds']:.0f} s of training"
    if training.get("images_per_s") is not None:
        bought += f" ({training['images_per_s']:.0f} images/s on average)"
    parts = ["<h2>Training health</h2>", f"<p>The budget bought {html.escape(bought)}.</p>"]
    for warning in training.get("warnings", []):
        parts.append(
            f"<p class=warn><b>{html.escape(warning['kind'])}</b> at {warning['count']} of "
            f"{training['log_lines']} log lines, steps {warning['first_step']}-"
            f"{warning['last_step']}: {html.escape(str(warning['text']))}</p>"
        )
    if not training.get("health_logged"):
        parts.append(
            "<p class=note>This run's stats.jsonl holds no health metrics (a run from "
            "before they were logged, or no log line yet): D's grip on G is not known.</p>"
        )
    elif not training.get("warnings"):
        parts.append("<p class=note>No health warning was raised during training.</p>")
    series = training.get("series", {})
    columns = [key for key in _HEALTH_COLUMNS if key in series]
    if columns:
        parts.append(
            _table(["step", *(_HEALTH_COLUMNS[c] for c in columns)], _rows(series, columns))
        )
        parts.append(
            "<p class=note>D has won when real logits > 0 stays near 100% with a wide logit "
            "gap (G then gets almost no gradient); samples have collapsed when their "
            "diversity falls far below the real images'. ADA aims real logits > 0 at 60%.</p>"
        )
    return parts


def _rows(series: dict, columns: list[str]) -> list[list]:
    """Up to HEALTH_ROWS rows, evenly spaced over the logged steps, last step included."""
    steps = sorted({step for key in columns for step, _ in series[key]})
    if len(steps) > HEALTH_ROWS:
        picks = [round(i * (len(steps) - 1) / (HEALTH_ROWS - 1)) for i in range(HEALTH_ROWS)]
        steps = [steps[i] for i in sorted(set(picks))]
    values = {key: dict(map(tuple, series[key])) for key in columns}
    return [[step, *(values[key].get(step) for key in columns)] for step in steps]


def _details_section(metrics: dict) -> list[str]:
    details = "".join(
        f"<figure><figcaption><b>{html.escape(name)}</b></figcaption>"
        + _table(["", ""], [[k, v] for k, v in result.items() if k != "computed"])
        + "</figure>"
        for name, result in metrics.items()
        if not name.startswith("swd") and name != "probe_city"
    )
    return ["<h2>Details</h2>", f"<div class=grids>{details}</div>"]


def _samples_section(evaluation: dict, generated: torch.Tensor, real: torch.Tensor) -> list[str]:
    return [
        "<h2>Samples</h2>",
        "<div class=grids>"
        f"<figure><img alt='generated samples' src='{_png(generated)}'>"
        f"<figcaption>{min(GRID_IMAGES, len(generated))} generated (EMA generator, seed "
        f"{evaluation['seed']})</figcaption></figure>"
        f"<figure><img alt='real val windows' src='{_png(real)}'>"
        f"<figcaption>{min(GRID_IMAGES, len(real))} real val windows, drawn as training draws "
        "them (the SWD reference)</figcaption></figure></div>",
    ]


def _png(images: torch.Tensor) -> str:
    """uint8 [N,3,R,R] -> a data: URI of an 8-wide PNG grid of the first GRID_IMAGES."""
    buffer = io.BytesIO()
    image_grid(images[:GRID_IMAGES], nrow=8).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value) -> str:
    text = html.escape(format_value(value))
    if isinstance(value, str):
        tone = "good" if value.startswith(_GOOD) else "bad" if any(b in value for b in _BAD) else ""
        return f"<td class='{tone}'>{text}</td>" if tone else f"<td>{text}</td>"
    return f"<td>{text}</td>"


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers) if any(headers) else ""
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"
