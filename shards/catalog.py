"""The catalog: one Parquet row per image in the source, with a status and a reason.

Joining the four MSLS CSVs and the archive listings happens once, here; every later
step reads this table. Bad images are rows with a status other than "ok": they are
counted and reported, they never crash the run and never reach a shard.

Image checks are structural and cheap (header parse, size, JPEG end marker): the one
full decode happens in the shard writer, which also reports anything that slips past.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import simplejpeg
from PIL import Image, UnidentifiedImageError

from shards.atomic import atomic_path, write_text
from shards.msls import CSV_NAMES, ImageMember, MslsSource, SourceError, read_csv, read_member
from shards.parallel import parallel_map

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
    rows = _match(metadata, members)
    todo = [i for i, row in enumerate(rows) if row["status"] is None]
    jobs = [(str(source.root), rows[i]["archive"], rows[i]["member"], config) for i in todo]
    for i, checked in zip(todo, parallel_map(_inspect, jobs, "checking images", config.workers)):
        rows[i].update(checked)
        if checked["status"] == "ok" and _is_pano(rows[i]):
            rows[i].update(status="pano", reason="panorama (raw.csv pano, or 2:1 and wider)")
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return table.sort_by([("key", "ascending"), ("subset", "ascending"), ("city", "ascending")])


def metadata_table(source: MslsSource) -> pa.Table:
    """One row per seq_info.csv row of every folder, the other CSVs joined by index."""
    texts = source.csv_texts()
    folders = sorted({k[:3] for k in texts})
    parts = [_folder_metadata(folder, texts) for folder in folders]
    parts = [p for p in parts if p is not None]
    if not parts:
        raise SourceError(
            f"{source.root}: no seq_info.csv in the metadata; is msls_metadata.zip there?"
        )
    return pa.concat_tables(parts)


def _folder_metadata(folder: tuple[str, str, str], texts: dict) -> pa.Table | None:
    tables = {}
    for name in CSV_NAMES:
        data = texts.get((*folder, name))
        if data is None:
            continue
        try:
            tables[name] = read_csv(data)
        except SourceError as exc:
            log.warning(
                "%s/%s.csv: %s; its columns are treated as missing", "/".join(folder), name, exc
            )
    seq = tables.get("seq_info")
    if seq is None or "key" not in seq.column_names:
        log.warning(
            "%s: no usable seq_info.csv; its images are cataloged as no_metadata", "/".join(folder)
        )
        return None
    columns = {"key": seq.column("key")}
    columns.update(
        {name: pa.array([value] * seq.num_rows, pa.string()) for name, value in zip(FOLDER, folder)}
    )
    index = seq.column("index").to_pylist() if "index" in seq.column_names else None
    for column, (csv_name, dtype) in METADATA_COLUMNS.items():
        columns[column] = _aligned(tables.get(csv_name), column, index, seq.num_rows, dtype)
    return pa.table(columns)


def _aligned(
    table: pa.Table | None, column: str, index: list | None, n: int, dtype: pa.DataType
) -> pa.Array:
    """`column` of `table` reordered to seq_info's index values, typed; nulls where absent."""
    if table is None or column not in table.column_names:
        return pa.nulls(n, dtype)
    values = table.column(column).to_pylist()
    if index is not None and "index" in table.column_names:
        by_index = dict(zip(table.column("index").to_pylist(), values))
        values = [by_index.get(i) for i in index]
    else:
        values = (values + [None] * n)[:n]
    return _typed(pa.array(values, pa.string()), dtype)


def _typed(values: pa.Array, dtype: pa.DataType) -> pa.Array:
    """Cast text to `dtype`; a value that does not parse becomes null, not an error."""
    if dtype == pa.string():
        return values
    try:
        return pc.cast(values, dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = []
        for value in values.to_pylist():
            try:
                out.append(pc.cast(pa.scalar(value, pa.string()), dtype).as_py())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                out.append(None)
        return pa.array(out, dtype)


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
            row.update(status="missing", reason="in seq_info.csv but in no image archive")
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
    """Status of one image from its bytes: header, pixel count, JPEG end marker."""
    if not data:
        return {"status": "corrupt", "reason": "zero-byte file"}
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        kind = "JPEG"
    except ValueError:  # not a JPEG libjpeg-turbo understands: let PIL identify it
        header = _pil_header(data)
        if "status" in header:
            return header
        width, height, kind = header["width"], header["height"], header["kind"]
    size = {"width": width, "height": height}
    if width * height > max_pixels:
        return {
            **size,
            "status": "too_large",
            "reason": f"{width}x{height} exceeds {max_pixels} pixels",
        }
    if kind == "JPEG" and b"\xff\xd9" not in data[-64:]:
        return {**size, "status": "corrupt", "reason": "truncated: no JPEG end marker"}
    return {**size, "status": "ok", "reason": None}


def _pil_header(data: bytes) -> dict:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return {"width": image.size[0], "height": image.size[1], "kind": image.format}
    except Image.DecompressionBombError as exc:
        return {"status": "too_large", "reason": f"pixel bomb: {exc}"}
    except UnidentifiedImageError:  # its message holds an object address: not reproducible
        return {"status": "corrupt", "reason": "undecodable: not a recognised image format"}
    except (OSError, SyntaxError, ValueError) as exc:
        return {"status": "corrupt", "reason": f"undecodable: {exc}"}
