"""What the numbers mean for people: the headline rows and the run's training health.

The headline is one row per metric, `[metric, value, reference, verdict]`; its verdicts
must agree with what a person sees in the grids, so a collapsed (grey) generator is
never called near real whatever its SWD. Training health is read from the run's
stats.jsonl (gan/loop.py writes one line per log interval; older runs lack the health
fields, which is said, not guessed).
"""

from __future__ import annotations

import json
from pathlib import Path

from gan.metrics.palette import PALETTE_BAND, PALETTE_KEYS
from tasks.city_report import city_headline

COLLAPSE_RATIO = 0.5  # diversity ratio below which samples count as collapsed
NEAR_REAL_RATIO = 2.0  # SWD ratio bands beyond the floor's own spread (issue 13's goals)
FAIR_RATIO = 3.0
HEALTH_FIELDS = ("logit_gap", "real_pos", "diversity", "real_diversity", "ada_p")


def headline(metrics: dict, training: dict | None = None) -> list[list]:
    """[[metric, value, reference, verdict], ...]: one row per metric, for people."""
    collapsed = _collapsed(metrics)
    rows = []
    for name, result in metrics.items():
        if name.startswith("swd") and result.get("computed"):
            rows.append(
                [name, result["mean"], result["floor_mean"], swd_verdict(result, collapsed)]
            )
        elif name.startswith(("fid", "kid")):
            verdict = "lower is better; compare runs" if result.get("computed") else None
            value = result.get("value")
            rows.append([name, value, None, verdict or result.get("reason", "not computed")])
        elif name == "probe_city" and result.get("computed"):
            rows.append([name, result["accuracy"], result.get("random_d_accuracy"), _probe(result)])
        elif name == "memorisation" and result.get("computed"):
            rows.append([name, result["ratio"], 1.0, _memorisation(result, collapsed)])
        elif name == "diversity" and result.get("computed"):
            ratio = result["ratio"] or 0.0
            verdict = "mode collapse" if collapsed else "low diversity" if ratio < 0.8 else "ok"
            rows.append([name, result["ratio"], 1.0, verdict])
        elif name == "palette" and result.get("computed"):
            rows.append([name, result["ratio"], 1.0, _palette(result)])
    rows += city_headline(metrics)
    if training and training.get("steps") is not None:
        rows.append(["training", training["steps"], None, _training(training)])
    return rows


def swd_verdict(swd: dict, collapsed: bool = False) -> str:
    """The SWD verdict: "as good as real" within two of the floor's standard deviations,
    then bands at 2x and 3x the floor; collapsed samples are far from real whatever the
    number says."""
    ratio = swd["ratio"] if swd["ratio"] is not None else float("inf")
    as_real = swd.get("ratio_as_real") or 1.0
    if collapsed:
        return f"far from real: samples collapsed ({ratio:.1f}x floor)"
    if ratio <= as_real:
        verdict = "as good as real"
    elif ratio <= NEAR_REAL_RATIO:
        verdict = "near real"
    elif ratio <= FAIR_RATIO:
        verdict = "fair"
    else:
        verdict = "far from real"
    return f"{verdict} ({ratio:.1f}x floor; real is <= {as_real:.2f}x)"


def _collapsed(metrics: dict) -> bool:
    ratio = metrics.get("diversity", {}).get("ratio")
    return ratio is not None and ratio < COLLAPSE_RATIO


def _probe(probe: dict) -> str:
    random = probe.get("random_d_accuracy")
    margin = max(0.02, 2 * (0.25 / probe["test_images"]) ** 0.5)  # ~2 binomial std errors
    better = random is not None and probe["accuracy"] >= random + margin
    return "beats a random D" if better else "no better than a random D"


def _memorisation(memo: dict, collapsed: bool) -> str:
    ratio, copies = memo["ratio"], memo["fraction_below_val_p1"]
    if collapsed:  # near-identical, blurry samples sit near every image's mean
        return "not judged: samples collapsed (see diversity)"
    if copies > 0.05 or (ratio is not None and ratio < 0.5):
        return f"possible copies ({copies:.0%} closer than val's 1st pct)"
    if ratio is not None and ratio > 1.5:
        return "far from the training data (under-fit?)"
    return "no sign of copying"


def _palette(palette: dict) -> str:
    """The verdict: "ok", or which of contrast and chroma lie outside PALETTE_BAND, how."""
    words = {"contrast": ("more contrast", "flatter"), "chroma": ("more saturated", "greyer")}
    off = []
    for key in PALETTE_KEYS:
        ratio = palette[key]["ratio"]
        if not 1 / PALETTE_BAND <= ratio <= PALETTE_BAND:
            more, less = words[key]
            off.append(f"{more if ratio > 1 else less} than real ({key} {ratio:.2f}x)")
    return "; ".join(off) if off else "ok"


def _training(training: dict) -> str:
    budget = f"{training['steps']} steps"
    if training.get("seconds") is not None:
        budget += f" in {training['seconds']:.0f} s"
    if not training["health_logged"]:
        return f"{budget}; no health metrics logged (an older run)"
    if not training["warnings"]:
        return f"{budget}; healthy: no warning raised"
    kinds = "; ".join(f"{w['kind']} from step {w['first_step']}" for w in training["warnings"])
    return f"{budget}; {kinds}"


def training_health(run_dir: Path, step: int) -> dict:
    """The training side of a run, from run_dir/stats.jsonl (missing file: an empty story).

    Returns {"steps", "seconds", "images_per_s", "health_logged", "warnings": [{"kind",
    "first_step", "last_step", "count", "text"}], "series": {field: [[step, value], ...]}};
    `steps` is what the budget bought (the checkpoint's step).
    """
    lines = _stats_lines(Path(run_dir) / "stats.jsonl")
    series = {
        key: [[line["step"], line[key]] for line in lines if _number(line.get(key))]
        for key in ("loss_d", "loss_g", *HEALTH_FIELDS)
    }
    warnings: dict[str, dict] = {}
    for line in lines:
        for text in line.get("health") or []:
            kind = str(text).split(" (")[0]
            entry = warnings.setdefault(
                kind, {"kind": kind, "first_step": line["step"], "count": 0, "text": text}
            )
            entry["last_step"], entry["count"] = line["step"], entry["count"] + 1
    rates = [line["images_per_s"] for line in lines if _number(line.get("images_per_s"))]
    last = lines[-1] if lines else {}
    return {
        "steps": step,
        "seconds": last.get("seconds") if _number(last.get("seconds")) else None,
        "images_per_s": sum(rates) / len(rates) if rates else None,
        "log_lines": len(lines),
        "health_logged": any("health" in line for line in lines),
        "warnings": list(warnings.values()),
        "series": {key: values for key, values in series.items() if values},
    }


def _stats_lines(path: Path) -> list[dict]:
    """stats.jsonl's lines in order; a torn or foreign line is skipped, not fatal."""
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and _number(line.get("step")):
            lines.append(line)
    return lines


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
        lines.append(f"| {name} | {format_value(value)} | {format_value(reference)} | {verdict} |")
    if "skipped" in evaluation:  # a train-only version: no metrics, the reason instead
        lines[2:] = [evaluation["skipped"]]
    return "\n".join(lines)


def format_value(value) -> str:
    """A number as people read it in a table: 3 decimals, or thousands separators."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
