"""The catalog: one Parquet row per image in the source, with a status and a reason.

Joining the four MSLS CSVs and the archive listings happens once, here; every later
step reads this table. Bad images are rows with a status other than "ok": they are
counted and reported, they never crash the run and never reach a shard.

Image checks are structural and cheap (header parse, size as displayed): the one full,
strict decode happens in the shard writer, which drops what does not decode cleanly.

Hostile input (tests/test_hostile_input.py; archives: see shards/msls.py): a symlink
member is corrupt, a name twice in one zip is duplicate, a member over the size limit
(declared or real, e.g. a deflate bomb) is too_large, a lying or damaged member is
corrupt, a header claiming more than `max_pixels` is too_large. A CSV that cannot be
read costs its columns (nulls) with one warning naming archive and member; a value that
does not parse costs that value; non-UTF-8 bytes become U+FFFD (so a mangled key no
longer matches its image: no_metadata and missing). Rows of CSVs are handled in Arrow,
not Python objects, so a CSV of a million rows for absent images costs seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards.atomic import atomic_path, write_text
from shards.msls import (
    CSV_NAMES,
    MAX_CSV_BYTES,
    CsvMember,
    ImageMember,
    MslsSource,
    SourceError,
    read_csv,
    read_member,
)
from shards.parallel import parallel_map
from shards.photo import PhotoError, read_header

log = logging.getLogger("msls.catalog")

CATALOG_FORMAT = 1
STATUSES = ("ok", "pano", "corrupt", "missing", "no_metadata", "too_large", "duplicate")
FOLDER = ("subset", "city", "folder")
# Typed metadata columns, and which CSV carries each (absent CSV or column: nulls).
METADATA_COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "sequence_key": ("seq_info", pa.string()),
    "frame_number": ("seq_info", pa.int32()),
    "lon": ("raw", pa.float64()),
    "lat": ("raw", pa.float64()),
    "ca": ("raw", pa.float64()),
    "captured_at": ("raw", pa.int64()),
    "pano": ("raw", pa.bool_()),
    "night": ("postprocessed", pa.bool_()),
    "view_direction": ("postprocessed", pa.string()),
}
IMAGE_COLUMNS: dict[str, pa.DataType] = {
    "archive": pa.string(),
    "member": pa.string(),
    "nbytes": pa.int64(),
    "crc32": pa.int64(),
    "width": pa.int32(),
    "height": pa.int32(),
    "status": pa.string(),
    "reason": pa.string(),
}
# What pyarrow's cast parses, narrowed so the cast cannot fail (9 digits always fit an
# int32): anything else is set null in one vectorised pass, never a cast per value.
PARSEABLE = {
    "int32": r"^-?0*[0-9]{1,9}$",
    "int64": r"^-?0*[0-9]{1,18}$",
    "double": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?$|^[+-]?(nan|inf|infinity)$",
    "bool": r"^(true|false|1|0)$",
}
MISSING = "in seq_info.csv but in no image archive"
SCHEMA = pa.schema(
    [("key", pa.string())]
    + [(name, pa.string()) for name in FOLDER]
    + [(name, dtype) for name, (_, dtype) in METADATA_COLUMNS.items()]
    + list(IMAGE_COLUMNS.items())
)


@dataclass(frozen=True)
class CatalogConfig:
    """Limits that decide which images are trusted."""

    max_pixels: int = 50_000_000  # pixel bombs: MSLS tops out at 0.3 MP (panoramas ~1 MP)
    max_bytes: int = 32 * 1024 * 1024  # one member; bounds memory against lying zips
    workers: int = 0  # 0: all cores

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.max_bytes <= 0 or self.workers < 0:
            raise ValueError("max_pixels and max_bytes must be positive, workers >= 0")


@dataclass(frozen=True)
class Catalog:
    """A written catalog: its file, content hash and status counts."""

    path: Path
    hash: str
    counts: dict[str, int]

    def table(self) -> pa.Table:
        return pq.read_table(self.path)


def build_catalog(
    source_dir: Path, catalog_dir: Path, config: CatalogConfig = CatalogConfig()
) -> Catalog:
    """Catalog every image of the MSLS source in `source_dir` into `catalog_dir`.

    A cheap fingerprint of the source files (names, sizes, mtimes) maps to the last
    catalog built from them, so re-running on unchanged data reads no image.
    """
    source = MslsSource(Path(source_dir))
    pointer = catalog_dir / f"source-{_fingerprint(source, config)}.json"
    if pointer.exists():
        cached = json.loads(pointer.read_text())
        path = catalog_dir / cached["file"]
        if path.exists():
            log.info("catalog unchanged: %s", path)
            return Catalog(path, cached["hash"], cached["counts"])
    table = _catalog_table(source, config)
    digest = table_hash(table)
    path = catalog_dir / f"catalog-{digest}.parquet"
    if not path.exists():
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    counts = dict(Counter(table.column("status").to_pylist()))
    write_text(pointer, json.dumps({"file": path.name, "hash": digest, "counts": counts}))
    log.info("catalog %s: %s", digest, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return Catalog(path, digest, counts)


def _fingerprint(source: MslsSource, config: CatalogConfig) -> str:
    files = source.image_archives() + source.metadata_archives()
    if not files:  # an extracted tree: its CSVs and folders stand in for the archives
        files = sorted(source.root.glob("*/*/*/*.csv")) + sorted(source.root.glob("*/*/*/images"))
    stats = [
        (str(p.relative_to(source.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]
    limits = {k: v for k, v in asdict(config).items() if k != "workers"}
    blob = json.dumps([CATALOG_FORMAT, limits, stats], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def table_hash(table: pa.Table) -> str:
    """Content hash of a table (16 hex digits): Arrow IPC bytes of its sorted rows."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def _catalog_table(source: MslsSource, config: CatalogConfig) -> pa.Table:
    members, ignored = source.image_members()
    metadata = metadata_table(source)
    if ignored:
        log.warning("%s: ignored %d archive members outside the MSLS layout", source.root, ignored)
    missing, metadata = _split_missing(metadata, members)
    rows = _match(metadata, members)
    todo = [i for i, row in enumerate(rows) if row["status"] is None]
    jobs = [(str(source.root), rows[i]["archive"], rows[i]["member"], config) for i in todo]
    for i, checked in zip(todo, parallel_map(_inspect, jobs, "checking images", config.workers)):
        rows[i].update(checked)
        if checked["status"] == "ok" and _is_pano(rows[i]):
            rows[i].update(status="pano", reason="panorama (raw.csv pano, or 2:1 and wider)")
    # missing first: the stable sort then orders ties (same key, subset, city) as before
    # the split, metadata rows ahead of image-only rows, so catalog hashes do not move
    table = pa.concat_tables([missing, pa.Table.from_pylist(rows, schema=SCHEMA)])
    return table.sort_by([("key", "ascending"), ("subset", "ascending"), ("city", "ascending")])


def metadata_table(source: MslsSource) -> pa.Table:
    """One row per seq_info.csv row of every folder, the other CSVs joined by index."""
    csvs = source.csv_members()
    folders = sorted({k[:3] for k in csvs})
    parts = [_folder_metadata(source.root, folder, csvs) for folder in folders]
    parts = [p for p in parts if p is not None]
    if not parts:
        raise SourceError(
            f"{source.root}: no usable seq_info.csv in the metadata (the warnings above say "
            "why); is msls_metadata.zip there and complete?"
        )
    return pa.concat_tables(parts)


def _read_csvs(
    root: Path, folder: tuple[str, str, str], csvs: dict[tuple[str, str, str, str], CsvMember]
) -> dict[str, pa.Table]:
    """The folder's CSVs that read and parse; each one that does not gets one warning."""
    tables = {}
    for name in CSV_NAMES:
        where = csvs.get((*folder, name))
        if where is None:
            continue
        try:
            tables[name] = read_csv(read_member(root, where.archive, where.member, MAX_CSV_BYTES))
        except (ValueError, OSError) as exc:  # too large, damaged, unparseable (SourceError)
            log.warning(
                "%s: %s; its columns are treated as missing (replace %s with a fresh copy)",
                where, exc, where.archive or "it",
            )  # fmt: skip
    return tables


def _folder_metadata(
    root: Path, folder: tuple[str, str, str], csvs: dict[tuple[str, str, str, str], CsvMember]
) -> pa.Table | None:
    tables = _read_csvs(root, folder, csvs)
    seq = tables.get("seq_info")
    if seq is None or "key" not in seq.column_names:
        where = csvs.get((*folder, "seq_info"))
        if where is None:
            where, why = "/".join(folder), "no seq_info.csv"
        else:
            why = "unusable" if seq is None else "no 'key' column (is its header line missing?)"
        log.warning("%s: %s, so its images are cataloged as no_metadata", where, why)
        return None
    columns = {"key": seq.column("key")}
    columns.update({name: pa.repeat(value, seq.num_rows) for name, value in zip(FOLDER, folder)})
    index = seq.column("index").combine_chunks() if "index" in seq.column_names else None
    aligned = {
        name: table if name == "seq_info" else _aligned(table, index, seq.num_rows)
        for name, table in tables.items()
    }
    for column, (csv_name, dtype) in METADATA_COLUMNS.items():
        table = aligned.get(csv_name)
        if table is None or column not in table.column_names:
            columns[column] = pa.nulls(seq.num_rows, dtype)
        else:
            columns[column] = _typed(table.column(column), dtype)
    return pa.table(columns)


def _aligned(table: pa.Table, index: pa.Array | None, n: int) -> pa.Table:
    """`table`'s rows reordered to seq_info's `index` values; null rows where absent.

    One lookup in Arrow per CSV, not a dict per row: a million rows cost a fraction of
    a second. Where an index value repeats, its first row is the one used. Without an
    index column on either side, rows align by position.
    """
    if index is not None and "index" in table.column_names:
        return table.take(pc.index_in(index, value_set=table.column("index").combine_chunks()))
    rows = np.arange(n)
    return table.take(pa.array(rows, mask=rows >= table.num_rows))


def _typed(values: pa.ChunkedArray, dtype: pa.DataType) -> pa.ChunkedArray:
    """Cast text to `dtype`; a value that does not parse becomes null, not an error."""
    if dtype == pa.string():
        return values
    parseable = pc.match_substring_regex(values, PARSEABLE[str(dtype)], ignore_case=True)
    return pc.cast(pc.if_else(parseable, values, pa.scalar(None, pa.string())), dtype)


def _split_missing(
    metadata: pa.Table, members: dict[tuple[str, str, str, str], ImageMember]
) -> tuple[pa.Table, pa.Table]:
    """(catalog rows of the plainly missing, the rest of `metadata`), split in Arrow.

    Plainly missing: a key and a sequence key, no image, and a key no other row has.
    `_match` builds a Python dict per row: with a CSV of a million rows for absent
    images the catalog took 1.6 GB and 25 s through it alone, and takes ~5 s with this.
    """
    folder_key = [metadata.column(name) for name in (*FOLDER, "key")]
    where = pc.binary_join_element_wise(*folder_key, "/")  # no "/" in subset, city, folder
    present = pa.array(["/".join(w) for w in members], pa.string())
    counts = metadata.group_by("key").aggregate([("key", "count")])
    repeated = counts.filter(pc.greater(counts.column("key_count"), 1)).column("key")
    key, sequence_key = metadata.column("key"), metadata.column("sequence_key")
    complete = pc.and_(_nonempty(key), _nonempty(sequence_key))
    elsewhere = pc.or_(
        pc.is_in(where, value_set=present),
        pc.is_in(key, value_set=repeated.combine_chunks()),
    )
    plain = pc.fill_null(pc.and_(complete, pc.invert(elsewhere)), False)
    missing = metadata.filter(plain)
    n = missing.num_rows
    columns = {
        **{f.name: pa.nulls(n, f.type) for f in SCHEMA},
        **{name: missing.column(name) for name in missing.column_names},
        "status": pa.repeat("missing", n),
        "reason": pa.repeat(MISSING, n),
    }
    return pa.table(columns, schema=SCHEMA), metadata.filter(pc.invert(plain))


def _nonempty(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.greater(pc.utf8_length(values), 0)


def _match(metadata: pa.Table, members: dict[tuple[str, str, str, str], ImageMember]) -> list[dict]:
    """Pair metadata rows with archive members; settle missing, duplicate, no_metadata."""
    rows: list[dict] = []
    seen_keys: set[str] = set()
    described: set[tuple[str, str, str, str]] = set()
    for meta in sorted(
        metadata.to_pylist(), key=lambda r: (r["subset"], r["city"], r["folder"], r["key"] or "")
    ):
        where = (meta["subset"], meta["city"], meta["folder"], meta["key"])
        member = members.get(where)
        row = {**meta, **dict.fromkeys(IMAGE_COLUMNS), **_member_columns(member)}
        if not meta["key"] or not meta["sequence_key"]:
            row.update(status="no_metadata", reason="seq_info.csv row without key or sequence_key")
        elif meta["key"] in seen_keys:
            row.update(status="duplicate", reason="key already cataloged from another folder")
        elif member is None:
            row.update(status="missing", reason=MISSING)
        elif member.copies > 1:  # unzip tools disagree on which copy a name means: use none
            reason = f"{member.copies} members named {member.member} in {member.archive}"
            row.update(status="duplicate", reason=reason)
        seen_keys.add(meta["key"])
        described.add(where)
        rows.append(row)
    for where, member in sorted(members.items()):
        if where not in described:
            row = {
                **dict(zip(("subset", "city", "folder", "key"), where)),
                **_member_columns(member),
            }
            rows.append({**row, "status": "no_metadata", "reason": "image in no seq_info.csv"})
    return rows


def _is_pano(row: dict) -> bool:
    if row["pano"] is not None:
        return row["pano"]
    return row["width"] >= 1.9 * row["height"]


def _member_columns(member: ImageMember | None) -> dict:
    if member is None:
        return {}
    return {
        "archive": member.archive,
        "member": member.member,
        "nbytes": member.nbytes,
        "crc32": member.crc32,
    }


def _inspect(job: tuple[str, str, str, CatalogConfig]) -> dict:
    """Structural check of one image (runs in a worker process)."""
    root, archive, member, config = job
    try:
        data = read_member(Path(root), archive, member, config.max_bytes)
    except ValueError as exc:
        return {"status": "too_large", "reason": str(exc)}
    except (OSError, EOFError, RuntimeError) as exc:  # zlib/CRC errors, unreadable members
        return {"status": "corrupt", "reason": f"unreadable member: {exc}"}
    return inspect_image(data, config.max_pixels)


def inspect_image(data: bytes, max_pixels: int) -> dict:
    """Status of one image from its header: format, size as displayed, pixel count.

    Never its last bytes: a JPEG with a trailer after its end marker is a valid photo,
    and a damaged one may still end in FFD9. Its pixels are judged by the shard
    writer's one strict decode (shards/photo.py).
    """
    if not data:
        return {"status": "corrupt", "reason": "zero-byte file"}
    try:
        header = read_header(data)
    except PhotoError as exc:
        return {"status": exc.status, "reason": str(exc)}
    width, height = header.size
    size = {"width": width, "height": height}
    if width * height > max_pixels:
        return {
            **size,
            "status": "too_large",
            "reason": f"{width}x{height} exceeds {max_pixels} pixels",
        }
    return {**size, "status": "ok", "reason": None}
