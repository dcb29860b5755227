"""Dataset versions: plan (split + shard assignment), finalize, and the LATEST pointer.

A version is immutable and named by a hash of its inputs (catalog content, split and
shard parameters, the split assignment), so the same inputs give the same version and
re-running is a no-op. It is built in a hidden staging directory; manifest.parquet and
dataset.json are written last, the directory is renamed into place, and only then is
`LATEST` moved. A reader therefore never sees a partial version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shards.atomic import atomic_path, remove_torn_writes, write_text
from shards.catalog import Catalog
from shards.errors import DatasetError
from shards.imaging import ShardConfig
from shards.info import DATASET_FORMAT, INFO_FILE, DatasetInfo, ShardEntry
from shards.layout import DataLayout
from shards.split import Sequence, SplitConfig, assign_splits
from shards.writer import SAMPLE_FIELDS, ShardJob, load_results

log = logging.getLogger("msls.dataset")

PLAN_COLUMNS = (
    "key",
    "archive",
    "member",
    "city_index",
    "shard",
    "width",
    "height",
    *SAMPLE_FIELDS,
)


@dataclass(frozen=True)
class DatasetPlan:
    """A version to build: where it is staged and which shards it needs."""

    version: str
    staging: Path
    shards: tuple[str, ...]
    complete: bool  # the version already exists: nothing to do

    def jobs(self, source_root: Path, config: ShardConfig) -> list[ShardJob]:
        return [ShardJob(str(self.staging), s, str(source_root), config) for s in self.shards]


def plan_dataset(
    catalog: Catalog, layout: DataLayout, split: SplitConfig, shard: ShardConfig
) -> DatasetPlan:
    """Assign splits and shards to the usable catalog rows; stage the plan on disk.

    Call it under the prepare lock: it also sweeps what killed runs left half-written.
    """
    for directory in (layout.catalog, layout.datasets):
        remove_torn_writes(directory)
    rows = _usable_rows(catalog, shard)
    if not rows:
        raise DatasetError(
            f"{catalog.path}: no usable images (status counts {catalog.counts}); check the source"
        )
    previous = previous_assignment(layout, split)
    sequences = _sequences(rows)
    assignment = assign_splits(sequences, split, previous)
    version = _version_id(catalog.hash, split, shard, assignment)
    if (layout.dataset(version) / INFO_FILE).exists():
        return DatasetPlan(version, layout.dataset(version), (), complete=True)
    staging = layout.staging(version)
    cities = sorted({r["city"] for r in rows})
    _place(rows, assignment, cities, shard)
    # plan.parquet is written last: a run killed between the two writes leaves no
    # plan.parquet, so the next run writes both again (a plan.parquet without its
    # plan.json, as runs before this order could leave, is rewritten too).
    if not all((staging / name).exists() for name in ("plan.json", "plan.parquet")):
        plan_info = {"catalog": catalog.hash, "cities": cities, "split": split.as_dict()}
        write_text(staging / "plan.json", json.dumps({**plan_info, "shard": shard.as_dict()}))
        table = pa.Table.from_pylist(rows).select(PLAN_COLUMNS).sort_by("shard")
        with atomic_path(staging / "plan.parquet") as tmp:
            pq.write_table(table, tmp, row_group_size=shard.shard_size)
    shards = tuple(sorted({r["shard"] for r in rows}))
    return DatasetPlan(version, staging, shards, complete=False)


def _usable_rows(catalog: Catalog, shard: ShardConfig) -> list[dict]:
    keep = {"ok", "pano"} if shard.include_panos else {"ok"}
    return [r for r in catalog.table().to_pylist() if r["status"] in keep]


def _sequences(rows: list[dict]) -> list[Sequence]:
    sizes = Counter((r["city"], r["sequence_key"]) for r in rows)
    return [Sequence(city, seq, n) for (city, seq), n in sorted(sizes.items())]


def _version_id(catalog_hash: str, split: SplitConfig, shard: ShardConfig, assignment: dict) -> str:
    blob = json.dumps(
        [
            DATASET_FORMAT,
            catalog_hash,
            split.as_dict(),
            shard.as_dict(),
            sorted(assignment.items()),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _place(rows: list[dict], assignment: dict, cities: list[str], shard: ShardConfig) -> None:
    """Set split, city_index and shard on each row.

    Within a (split, city) samples are ordered by a hash of their key, so each shard
    mixes many sequences instead of holding a few near-duplicate runs of frames.
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        row["split"] = assignment[row["sequence_key"]]
        row["city_index"] = cities.index(row["city"])
        groups[(row["split"], row["city"])].append(row)
    for (split, city), members in groups.items():
        members.sort(key=lambda r: hashlib.sha1(r["key"].encode()).hexdigest())
        for i, row in enumerate(members):
            row["shard"] = f"{split}/{city}/shard-{i // shard.shard_size:06d}.tar"


def previous_assignment(layout: DataLayout, split: SplitConfig) -> dict[str, str] | None:
    """Sequence splits of the newest version built with the same split parameters.

    Carrying them forward is what keeps a sequence in its split when data is added.
    """
    candidates = []
    for info_path in layout.datasets.glob(f"*/{INFO_FILE}"):
        info = DatasetInfo.load(info_path)
        if info.split_params == split.as_dict():
            candidates.append((info.created, info_path.parent))
    if not candidates:
        return None
    manifest = pq.read_table(
        max(candidates)[1] / "manifest.parquet", columns=["sequence_key", "split"]
    )
    return dict(
        zip(manifest.column("sequence_key").to_pylist(), manifest.column("split").to_pylist())
    )


def finalize_dataset(
    plan: DatasetPlan, layout: DataLayout, catalog: Catalog, code_version: str
) -> Path:
    """Write manifest.parquet and dataset.json, move the version into place, point LATEST."""
    final = layout.dataset(plan.version)
    if not plan.complete:
        results = load_results(plan.staging, plan.shards)
        remove_torn_writes(plan.staging, recursive=True)  # half shards of killed runs
        if final.exists():  # a leftover from a crash between rename and LATEST: keep the new one
            shutil.rmtree(final)
        _remove_empty_shards(plan.staging, results)
        manifest = _manifest(plan.staging, results)
        with atomic_path(plan.staging / "manifest.parquet") as tmp:
            pq.write_table(manifest, tmp)
        info = _dataset_info(plan, manifest, results, catalog, code_version)
        if info.samples("val") == 0:
            log.warning(
                "%s has no val split (val_fraction %s): it trains, but evaluation and the "
                "real-vs-generated renders will be skipped",
                plan.version, info.split_params["val_fraction"],
            )  # fmt: skip
        info.save(plan.staging)
        shutil.rmtree(plan.staging / ".results", ignore_errors=True)
        (plan.staging / "plan.parquet").unlink()
        os.replace(plan.staging, final)
    write_text(layout.latest_pointer, plan.version + "\n")
    return final


def _remove_empty_shards(staging: Path, results: list[dict]) -> None:
    """Remove the tars of planned shards that hold no sample (they are not listed).

    A planned shard ends empty when every photo in it failed to decode (a city of
    damaged files): listed, it would be a shard no reader can draw from.
    """
    for result in results:
        if not result["keys"]:
            (staging / result["shard"]).unlink(missing_ok=True)


def _manifest(staging: Path, results: list[dict]) -> pa.Table:
    written = {key for result in results for key in result["keys"]}
    plan = pq.read_table(staging / "plan.parquet")
    keep = pa.array([key in written for key in plan.column("key").to_pylist()])
    columns = [c for c in PLAN_COLUMNS if c not in ("archive", "member", "width", "height")]
    manifest = plan.filter(keep).select(columns)
    source = plan.filter(keep).select(["archive", "member", "width", "height"])
    for name in source.column_names:
        manifest = manifest.append_column(f"source_{name}", source.column(name))
    return manifest.sort_by([("shard", "ascending"), ("key", "ascending")])


def _dataset_info(
    plan: DatasetPlan, manifest: pa.Table, results: list[dict], catalog: Catalog, code_version: str
) -> DatasetInfo:
    staged = json.loads((plan.staging / "plan.json").read_text())
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for shard in plan.shards:  # a planned city whose photos all failed counts 0, not absent
        split, city, _ = shard.split("/")
        counts[split][city] = 0
    for (split, city), n in Counter(
        zip(manifest.column("split").to_pylist(), manifest.column("city").to_pylist())
    ).items():
        counts[split][city] = n
    failures = [f for result in results for f in result["failures"]]
    dropped = Counter({s: n for s, n in catalog.counts.items() if s != "ok"})
    dropped.update(f.get("status", "decode_failed") for f in failures)
    shard_sizes = Counter(manifest.column("shard").to_pylist())
    return DatasetInfo(
        version=plan.version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        code_version=code_version,
        catalog={"hash": catalog.hash, "file": catalog.path.name, "counts": catalog.counts},
        params={"split": staged["split"], "shard": staged["shard"]},
        cities=staged["cities"],
        counts=dict(counts),
        totals={split: sum(c.values()) for split, c in counts.items()},
        dropped=dict(sorted(dropped.items())),
        decode_failures=failures[:100],
        shards=[
            ShardEntry(r["shard"], shard_sizes[r["shard"]], r["bytes"])
            for r in sorted(results, key=lambda r: r["shard"])
            if r["keys"]
        ],
    )


def resolve_version(layout: DataLayout, version: str = "latest") -> str:
    """A concrete version id from "latest" or an id; DatasetError if it does not exist."""
    if version == "latest":
        if not layout.latest_pointer.exists():
            raise DatasetError(f"{layout.latest_pointer}: no dataset yet; run `msls prepare` first")
        version = layout.latest_pointer.read_text().strip()
    if not (layout.dataset(version) / INFO_FILE).exists():
        raise DatasetError(
            f"{layout.dataset(version)}: no such dataset version; `msls prepare` builds one"
        )
    return version


def resume_version(
    layout: DataLayout, requested: str, recorded: str | None, checkpoint: Path
) -> str:
    """The dataset version a resumed run continues on: the one its checkpoint records.

    Not LATEST: a version prepared since (another resolution, other split parameters)
    would train the old model on other data and judge it on another val split.
    `requested` is the user's --dataset ("latest", the default, means not given); a
    different version is refused in one line. `recorded` None: a checkpoint from before
    checkpoints named their dataset, which resolves `requested` as a new run would.
    """
    if recorded is None:
        return resolve_version(layout, requested)
    if requested not in ("latest", recorded):
        raise DatasetError(
            f"--dataset {requested}: {checkpoint} was trained on dataset version {recorded} "
            f"and a resume continues on it; drop --dataset, or train a new run on {requested}"
        )
    if not (layout.dataset(recorded) / INFO_FILE).exists():
        raise DatasetError(
            f"{checkpoint}: its dataset version {recorded} is no longer in {layout.datasets} "
            "(pruned?); rebuild it with the same `msls prepare` options, or train a new run"
        )
    return recorded


def load_info(layout: DataLayout, version: str = "latest") -> DatasetInfo:
    """dataset.json of a version (\"latest\" follows the pointer)."""
    return DatasetInfo.load(layout.dataset(resolve_version(layout, version)))
