"""The per-city metrics (gan/city_metrics.py) for people: headline rows and report.html's
per-city table, kept apart from tasks/evaluate.py's general report."""

from __future__ import annotations

import html
from collections.abc import Callable

import gan.city_metrics  # noqa: F401  (registers swd_city_val and city_test)

RECOGNISED = 3.0  # x chance: a generated city recognised this often is "as asked"


def city_headline(metrics: dict) -> list[list]:
    """Headline rows [metric, value, reference, verdict]: the mean per-city SWD floor ratio
    (with the worst city), and how often generated cities are recognised."""
    rows = []
    by_city = metrics.get("swd_city_val", {})
    if by_city.get("computed") and by_city["mean_ratio"] is not None:
        worst, entry = max(by_city["cities"].items(), key=lambda c: c[1]["ratio"] or 0.0)
        verdict = (
            f"mean of {len(by_city['cities'])} cities' floor ratios; worst {worst} "
            f"({entry['ratio']:.1f}x)"
        )
        rows.append(["swd_city_val", by_city["mean_ratio"], 1.0, verdict])
    test = metrics.get("city_test", {})
    if test.get("computed") and test["generated_accuracy"] is not None:
        times = test["generated_accuracy"] / test["chance"]
        if times >= RECOGNISED:
            verdict = "recognised as asked"
        elif times > 1.5:
            verdict = "weakly recognised"
        else:
            verdict = "not recognised (chance level)"
        verdict += f": {times:.1f}x chance; real val {test['val_accuracy']:.0%}"
        rows.append(["city_test", test["generated_accuracy"], test["val_accuracy"], verdict])
    return rows


def city_numbers(metrics: dict) -> dict[str, float]:
    """Per-city numbers as flat MLflow metric names: `swd_city_val.<city>` (SWD x1e3),
    `swd_city_val.<city>.ratio` (to its floor), `city_test.<city>` (share of generated
    images recognised as the city asked for)."""
    numbers = {}
    by_city = metrics.get("swd_city_val", {})
    for city, entry in by_city.get("cities", {}).items() if by_city.get("computed") else ():
        numbers[f"swd_city_val.{city}"] = entry["mean"]
        if entry["ratio"] is not None:
            numbers[f"swd_city_val.{city}.ratio"] = entry["ratio"]
    test = metrics.get("city_test", {})
    for city, share in (test.get("generated_by_city") or {}).items():
        numbers[f"city_test.{city}"] = share
    return numbers


def city_parts(metrics: dict, table: Callable[[list[str], list[list]], str]) -> list[str]:
    """report.html's per-city section (heading, `table(headers, rows)`, note), or nothing
    when neither per-city metric was computed."""
    by_city, test = metrics.get("swd_city_val", {}), metrics.get("city_test", {})
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
        f"SWD x1e3 of the images generated for each city ({asked}) against that city's val "
        "images; floor: that city's train images against the same val images. Recognised: "
        "the share a small CNN trained on train images classifies as the city"
        + (f" (chance {test['chance']:.2f})" if test.get("computed") else "")
        + "."
    )
    headers = ["city", "SWD", "SWD floor", "recognised (real val)", "recognised (generated)"]
    return ["<h2>Per city</h2>", table(headers, rows), f"<p class=note>{html.escape(note)}</p>"]
