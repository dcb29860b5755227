"""The per-city metrics (gan/city_metrics.py) for people: headline rows and report.html's
per-city table, kept apart from tasks/evaluate.py's general report."""

from __future__ import annotations

import html
from collections.abc import Callable

RECOGNISED = 3.0  # x chance: a generated city recognised this often is "as asked"


def _named(metrics: dict, prefix: str) -> tuple[str, dict]:
    """(name, result) of the metric whose name starts with `prefix` (names carry counts)."""
    name = next((n for n in metrics if n.startswith(prefix)), prefix)
    return name, metrics.get(name, {})


def city_headline(metrics: dict) -> list[list]:
    """Headline rows [metric, value, reference, verdict]: the mean per-city SWD floor ratio
    (with the worst city), and how often generated cities are recognised."""
    rows = []
    swd_name, by_city = _named(metrics, "city_swd")
    if by_city.get("computed") and by_city["mean_ratio"] is not None:
        worst, entry = max(by_city["cities"].items(), key=lambda c: c[1]["ratio"] or 0.0)
        verdict = (
            f"mean of {len(by_city['cities'])} cities' floor ratios; worst {worst} "
            f"({entry['ratio']:.1f}x)"
        )
        rows.append([swd_name, by_city["mean_ratio"], 1.0, verdict])
    test_name, test = _named(metrics, "city_test")
    if test.get("computed") and test["generated_accuracy"] is not None:
        times = test["generated_accuracy"] / test["chance"]
        if times >= RECOGNISED:
            verdict = "recognised as asked"
        elif times > 1.5:
            verdict = "weakly recognised"
        else:
            verdict = "not recognised (chance level)"
        verdict += f": {times:.1f}x chance; real val {test['val_accuracy']:.0%}"
        rows.append([test_name, test["generated_accuracy"], test["val_accuracy"], verdict])
    return rows


def city_numbers(metrics: dict) -> dict[str, float]:
    """Per-city numbers as flat MLflow metric names: `city_swd2k_valwin.<city>` (SWD
    x1e3), `<that>.<city>.ratio` (to its floor), `city_test2k.<city>` (share of generated
    images recognised as the city asked for)."""
    numbers = {}
    swd_name, by_city = _named(metrics, "city_swd")
    for city, entry in by_city.get("cities", {}).items() if by_city.get("computed") else ():
        numbers[f"{swd_name}.{city}"] = entry["mean"]
        if entry["ratio"] is not None:
            numbers[f"{swd_name}.{city}.ratio"] = entry["ratio"]
    test_name, test = _named(metrics, "city_test")
    for city, share in (test.get("generated_by_city") or {}).items():
        numbers[f"{test_name}.{city}"] = share
    return numbers


def city_parts(metrics: dict, table: Callable[[list[str], list[list]], str]) -> list[str]:
    """report.html's per-city section (heading, `table(headers, rows)`, note), or nothing
    when neither per-city metric was computed."""
    by_city, test = _named(metrics, "city_swd")[1], _named(metrics, "city_test")[1]
    if not by_city.get("computed") and not test.get("computed"):
        return []
    swd = by_city.get("cities", {}) if by_city.get("computed") else {}
    real = test.get("val_by_city", {}) if test.get("computed") else {}
    fake = test.get("generated_by_city") or {}
    rows = [
        [name, swd.get(name, {}).get("mean"), swd.get(name, {}).get("floor_mean"),
         real.get(name), fake.get(name)]
        for name in dict.fromkeys([*swd, *real])
    ]  # fmt: skip
    asked = "as asked" if by_city.get("conditional") else "all samples: the G is unconditional"
    note = (
        f"SWD x1e3 of the images generated for each city ({asked}) against windows of that "
        "city's val strips; floor: its train windows against the same. Recognised: "
        "the share a small CNN trained on train images classifies as the city"
        + (f" (chance {test['chance']:.2f})" if test.get("computed") else "")
        + "."
    )
    headers = ["city", "SWD", "SWD floor", "recognised (real val)", "recognised (generated)"]
    return ["<h2>Per city</h2>", table(headers, rows), f"<p class=note>{html.escape(note)}</p>"]
