"""A resume continues on the dataset version its checkpoint names (#14, fault 4).

case11: train on a version, prepare another (LATEST moves: another resolution here),
resume. The resumed run must read the checkpoint's version, hold its lease again, and
refuse an explicit --dataset that differs, in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shards.catalog import CatalogConfig
from shards.dataset import resolve_version
from shards.errors import DatasetError
from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.pipeline import prepare_dataset
from shards.retention import active_leases
from shards.split import SplitConfig
from tasks.train import train_model
from tests.tiny import build_dataset, tiny_job


class LeaseWatch:
    """Records the leases held on `version` while the run trains."""

    def __init__(self, layout: DataLayout, version: str) -> None:
        self.layout, self.version, self.seen = layout, version, []

    def on_log(self, trainer, metrics) -> None:
        self.seen.append(len(active_leases(self.layout, self.version)))

    def on_checkpoint(self, trainer, path: Path) -> None: ...

    def on_end(self, trainer) -> None: ...


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A run trained on the first version, then a 128 px version made LATEST."""
    root = build_dataset(tmp_path_factory.mktemp("resume-dataset"))
    layout = DataLayout.at(root)
    first = resolve_version(layout)
    train_model(tiny_job(root, run="r", steps=2))
    prepare_dataset(
        root.parent / "src", layout, SplitConfig(val_fraction=0.3),
        ShardConfig(resolution=128, shard_size=6), CatalogConfig(workers=1),
    )  # fmt: skip
    assert resolve_version(layout) != first
    return layout, first


def test_a_resume_continues_on_the_checkpoints_version_and_holds_its_lease(moved):
    layout, first = moved
    watch = LeaseWatch(layout, first)
    result = train_model(tiny_job(layout.root, steps=4, resume="r"), [watch])
    assert result["dataset"] == first and result["step"] == 4
    assert watch.seen and all(n == 1 for n in watch.seen)


def test_naming_the_same_version_is_fine_and_another_is_refused_in_one_line(moved):
    layout, first = moved
    latest = resolve_version(layout)
    with pytest.raises(DatasetError) as error:
        train_model(tiny_job(layout.root, steps=6, resume="r", dataset=latest))
    message = str(error.value)
    assert message.startswith(f"--dataset {latest}: ") and f"dataset version {first}" in message
    assert "\n" not in message
    assert train_model(tiny_job(layout.root, steps=6, resume="r", dataset=first))["step"] == 6


def test_a_resume_whose_version_was_pruned_says_so(moved, tmp_path):
    layout, first = moved
    gone = DataLayout.at(tmp_path / "copy")
    gone.runs.mkdir(parents=True)
    (gone.runs / "r").symlink_to(layout.runs / "r")
    with pytest.raises(DatasetError, match=rf"its dataset version {first} is no longer in"):
        train_model(tiny_job(gone.root, steps=8, resume="r"))
