"""A shard lost or damaged after its version was written: training names it, verify finds it."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from flows.cli import app
from shards.dataset import resolve_version
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from shards.verify import verify_dataset
from shards.version import DatasetVersion
from tasks.train import train_model
from tests.tiny import build_dataset, tiny_job


@pytest.fixture()
def damaged(tmp_path):
    """A version whose first train shard is truncated and second one deleted."""
    layout = DataLayout.at(build_dataset(tmp_path))
    version = DatasetVersion(layout.dataset(resolve_version(layout)))
    truncated, deleted = (version.path / s for s in version.shards("train")[:2])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    deleted.unlink()
    return layout, version, truncated, deleted


@pytest.mark.parametrize("cache", ["host", "none"])
def test_training_stops_at_a_bad_shard_by_default_and_names_it(damaged, cache):
    layout, _, truncated, deleted = damaged
    job = tiny_job(layout.root, loader=LoaderConfig(cache=cache, workers=1))
    named = "|".join(re.escape(str(path)) for path in (truncated, deleted))
    problem = r"unreadable shard \(\S+ is cut short\)|shard is missing"
    with pytest.raises(ValueError, match=rf"^({named}): ({problem}); run `msls verify`"):
        train_model(job)


@pytest.mark.parametrize("cache", ["host", "none"])
def test_skip_bad_shards_trains_on_and_counts_what_it_skipped(damaged, cache, caplog):
    layout, version, truncated, deleted = damaged
    loader = LoaderConfig(cache=cache, workers=1, skip_bad_shards=True)
    with caplog.at_level(logging.WARNING, logger="msls"):
        result = train_model(replace(tiny_job(layout.root), loader=loader))
    assert result["step"] == 4
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert str(deleted) in warned and str(truncated) in warned
    if cache == "host":  # one summary: how much of the split training goes without
        lost = sum(version.shard_samples(s) for s in version.shards("train")[:2])
        total = version.samples("train")
        assert f"skipped 2 of {len(version.shards('train'))} train shards: {lost} of {total}" in (
            warned
        )


def test_verify_finds_both_and_the_cli_fails(damaged):
    layout, version, truncated, deleted = damaged
    report = verify_dataset(version.path, workers=1)
    assert not report.ok
    problems = "\n".join(report.problems)
    assert str(truncated.relative_to(version.path)) in problems
    assert str(deleted.relative_to(version.path)) in problems
    result = CliRunner().invoke(app, ["--data-root", str(layout.root), "verify"])
    assert result.exit_code == 1 and "rebuild it with `msls prepare`" in result.output
