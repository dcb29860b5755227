"""Hostile input to the catalog and shard stage: real zips, real images, real code.

test_catalog.py covers `../` and absolute member names and one CSV with missing and
extra columns; this covers what an attacker (or a broken download) can do beyond that:
symlink members, repeated names, lying sizes, deflate bombs, pixel bombs, and CSVs that
are mangled, mistyped, empty, headerless, damaged, oversized or a million rows long.
What each gets is documented in shards/msls.py and shards/catalog.py.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import stat
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pyarrow.compute as pc
import pytest
from PIL import Image

from shards.catalog import CatalogConfig, build_catalog
from shards.msls import MAX_CSV_BYTES, SourceError, read_member
from shards.writer import MAX_MEMBER_BYTES
from tests.msls_builder import MslsBuilder, Row, jpeg

SMALL = CatalogConfig(workers=1)
IMAGES = "train_val/{city}/database/images/{key}.jpg"
FOLDER = "train_val/{city}/database"
BOMB_BYTES = 200 * 1024 * 1024  # zeros: deflate to ~200 KB


def rows(catalog) -> dict[str, dict]:
    return {row["key"]: row for row in catalog.table().to_pylist()}


def good_source(tmp_path: Path, *extra: Row) -> Path:
    """Two good austin frames (ausgoodf0, ausgoodf1) plus CSV rows for `extra` keys."""
    b = MslsBuilder()
    b.sequence("austin", "good", 2)
    for row in extra:
        b.image("austin", row, None)
    return b.write(tmp_path / "src")


def add_member(archive: Path, info: zipfile.ZipInfo | str, data: bytes) -> None:
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(info, data)


def write_bomb(archive: Path, name: str, size: int) -> None:
    """A zip whose one member is `size` zero bytes, deflated, streamed (never all in memory)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(archive, "w") as zf, zf.open(info, "w") as out:
        for _ in range(size >> 20):
            out.write(zeros)


def declare_size(
    archive: Path, name: str, file_size: int, compress_size: int | None = None
) -> None:
    """Rewrite the sizes that member `name`'s local header and central entry declare."""
    data = bytearray(archive.read_bytes())
    encoded = name.encode()
    # (signature, offset of compressed then uncompressed size, offset of the name)
    for signature, sizes_at, name_at in ((b"PK\x03\x04", 18, 30), (b"PK\x01\x02", 20, 46)):
        for match in re.finditer(re.escape(signature), data):
            at = match.start()
            if data[at + name_at : at + name_at + len(encoded)] == encoded:
                packed, _ = struct.unpack_from("<II", data, at + sizes_at)
                sizes = (packed if compress_size is None else compress_size, file_size)
                struct.pack_into("<II", data, at + sizes_at, *sizes)
    archive.write_bytes(bytes(data))


def peak_bytes(fn):
    """(fn(), peak bytes Python allocated while it ran); warm the code up first."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory) -> Path:
    """msls_images_vol_2.zip holding austin/bomb.jpg: 200 MB of zeros in ~200 KB."""
    path = tmp_path_factory.mktemp("bomb") / "msls_images_vol_2.zip"
    write_bomb(path, IMAGES.format(city="austin", key="bomb"), BOMB_BYTES)
    assert path.stat().st_size < BOMB_BYTES // 500
    return path


@pytest.fixture
def catalog_warnings(caplog):
    """Warnings of the catalog's logger, whatever a CLI test did to propagation."""
    logger = logging.getLogger("msls.catalog")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="msls.catalog")
    yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    logger.removeHandler(caplog.handler)


@pytest.fixture
def warm(tmp_path):
    """Build one clean catalog first, so memory peaks measure the hostile input only."""
    src = good_source(tmp_path / "warm")
    build_catalog(src, tmp_path / "warm" / "catalog", SMALL)


# 1. Symbolic-link members: never followed, never an image.


def test_symlink_members_are_corrupt_and_never_followed(tmp_path):
    links = {"linkabs": b"/etc/passwd", "linkup": b"../../outside.jpg", "linkjpg": jpeg()}
    src = good_source(tmp_path, *(Row(key, "links") for key in links))
    volume = src / "msls_images_vol_1.zip"
    for key, target in links.items():  # linkjpg: a "target" that is a whole valid JPEG
        info = zipfile.ZipInfo(IMAGES.format(city="austin", key=key))
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        add_member(volume, info, target)
    before = set(tmp_path.rglob("*"))

    got = rows(build_catalog(src, tmp_path / "catalog", SMALL))

    for key in links:
        assert got[key]["status"] == "corrupt", got[key]
        assert "symbolic link" in got[key]["reason"]
    assert got["ausgoodf0"]["status"] == got["ausgoodf1"]["status"] == "ok"
    created = set(tmp_path.rglob("*")) - before
    assert all(path.is_relative_to(tmp_path / "catalog") for path in created), created
    # the shard writer reads through the same function: it refuses the link too
    with pytest.raises(OSError, match="symbolic link"):
        read_member(src, volume.name, IMAGES.format(city="austin", key="linkjpg"), 1 << 20)


# 2. One name twice in one zip: deterministic, flagged, neither copy used.


def test_repeated_member_name_is_duplicate_and_a_patch_resolves_it(tmp_path):
    src = good_source(tmp_path)
    name = IMAGES.format(city="austin", key="ausgoodf0")
    second = jpeg(80, 60, seed=42)
    with pytest.warns(UserWarning, match="Duplicate name"):
        add_member(src / "msls_images_vol_1.zip", name, second)

    first = build_catalog(src, tmp_path / "c1", SMALL)
    row = rows(first)["ausgoodf0"]
    assert row["status"] == "duplicate"
    assert row["reason"] == f"2 members named {name} in msls_images_vol_1.zip"
    assert row["crc32"] == zlib.crc32(second)  # the entry ZipFile.open would read: the last
    assert first.counts == {"ok": 1, "duplicate": 1}
    assert build_catalog(src, tmp_path / "c2", SMALL).hash == first.hash  # deterministic

    with zipfile.ZipFile(src / "msls_patch_v1.1.zip", "w") as zf:
        zf.writestr(name, second)
    patched = rows(build_catalog(src, tmp_path / "c3", SMALL))["ausgoodf0"]
    assert (patched["status"], patched["width"]) == ("ok", 80)


# 3. A member declaring less than it holds: cut at the declared size, then corrupt.


def test_member_declaring_fewer_bytes_than_it_holds_is_corrupt(tmp_path, bomb_zip, warm):
    src = good_source(tmp_path, Row("bomb", "lies"))
    declare_size(
        src / "msls_images_vol_1.zip", IMAGES.format(city="austin", key="ausgoodf0"), 100, 100
    )
    shutil.copy(bomb_zip, src / bomb_zip.name)
    declare_size(src / bomb_zip.name, IMAGES.format(city="austin", key="bomb"), 1000)

    catalog, peak = peak_bytes(lambda: build_catalog(src, tmp_path / "catalog", SMALL))

    got = rows(catalog)
    for key in ("ausgoodf0", "bomb"):  # a stored JPEG cut to 100 bytes; 200 MB said to be 1000
        assert got[key]["status"] == "corrupt", got[key]
        assert "Bad CRC-32" in got[key]["reason"]
    assert got["ausgoodf1"]["status"] == "ok"
    assert peak < 16 * 1024 * 1024  # what it really holds is never inflated


# 4. A deflate bomb: refused by its declared size, never inflated.


def test_deflate_bomb_is_too_large_and_never_inflated(tmp_path, bomb_zip, warm):
    src = good_source(tmp_path, Row("bomb", "boom"))
    shutil.copy(bomb_zip, src / bomb_zip.name)

    catalog, peak = peak_bytes(lambda: build_catalog(src, tmp_path / "catalog", SMALL))

    bomb = rows(catalog)["bomb"]
    assert bomb["status"] == "too_large"
    limit = SMALL.max_bytes
    assert bomb["reason"] == f"declares {BOMB_BYTES} bytes, over the {limit}-byte limit"
    assert peak < 16 * 1024 * 1024  # 200 MB uncompressed, 32 MB cap
    with pytest.raises(ValueError, match="declares"):  # the shard writer's read, same refusal
        read_member(src, bomb_zip.name, bomb["member"], MAX_MEMBER_BYTES)


# 5. Pixel bombs: a tiny file claiming a huge image is too_large, never decoded.


def png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR (CRC fixed up) claims width x height."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    ihdr = data.index(b"IHDR")
    struct.pack_into(">II", data, ihdr + 4, width, height)
    struct.pack_into(">I", data, ihdr + 17, zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def test_pixel_bombs_are_too_large_and_never_decoded(tmp_path, warm):
    bombs = {
        "pngbomb": png_claiming(60000, 60000),  # 3.6 GP: PIL's own bomb guard
        "pngbig": png_claiming(8000, 8000),  # 64 MP: under PIL's guard, over max_pixels
        "jpgbig": jpeg_claiming(10000, 6000),  # 60 MP
    }
    b = MslsBuilder()
    b.sequence("austin", "good", 1)
    for key, data in bombs.items():
        assert len(data) < 2000
        b.image("austin", Row(key, "bombs"), data)
    src = b.write(tmp_path / "src")

    catalog, peak = peak_bytes(lambda: build_catalog(src, tmp_path / "catalog", SMALL))

    got = rows(catalog)
    assert {key: got[key]["status"] for key in bombs} == dict.fromkeys(bombs, "too_large")
    assert got["pngbomb"]["reason"].startswith("pixel bomb: Image size (3600000000 pixels)")
    assert got["pngbig"]["reason"] == "8000x8000 exceeds 50000000 pixels"
    assert got["jpgbig"]["reason"] == "10000x6000 exceeds 50000000 pixels"
    assert (got["jpgbig"]["width"], got["jpgbig"]["height"]) == (10000, 6000)
    assert peak < 16 * 1024 * 1024  # a decode of pngbig alone would be 192 MB


# 6. CSVs: mangled, mistyped, huge, empty, headerless, damaged.


def write_metadata(src: Path, csvs: dict[str, bytes | str]) -> None:
    with zipfile.ZipFile(src / "msls_metadata.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in csvs.items():
            zf.writestr(name, text)


def seq_info(*keys: str, sequence: str = "good") -> str:
    return ",key,sequence_key,frame_number\n" + "".join(
        f"{i},{key},{sequence},{i}\n" for i, key in enumerate(keys)
    )


def test_non_utf8_bytes_throughout_a_column_cost_characters_not_rows(tmp_path):
    b = MslsBuilder()
    b.sequence("austin", "good", 2)
    b.sequence("paris", "good", 2)
    src = b.write(tmp_path / "src")
    austin, paris = FOLDER.format(city="austin"), FOLDER.format(city="paris")
    write_metadata(
        src,
        {
            f"{austin}/seq_info.csv": seq_info("ausgoodf0", "ausgoodf1"),
            f"{austin}/postprocessed.csv": b",key,view_direction,night\n"
            b"0,ausgoodf0,Sid\xe9ways,Tru\xe9\n1,ausgoodf1,\xe9\xe9\xff,\xff\xfe\n",
            f"{paris}/seq_info.csv": b",key,sequence_key\n"
            b"0,par\xe9goodf0,good\n1,par\xffgoodf1,good\n",
        },
    )
    got = rows(build_catalog(src, tmp_path / "catalog", SMALL))

    assert got["ausgoodf0"]["view_direction"] == "Sid\ufffdways"
    assert got["ausgoodf1"]["view_direction"] == "\ufffd\ufffd\ufffd"
    assert got["ausgoodf0"]["night"] is None and got["ausgoodf1"]["night"] is None
    assert got["ausgoodf0"]["status"] == got["ausgoodf1"]["status"] == "ok"
    # a mangled key no longer names its image: the image has no metadata, the row no image
    assert got["pargoodf0"]["status"] == got["pargoodf1"]["status"] == "no_metadata"
    assert got["par\ufffdgoodf0"]["status"] == "missing"


def test_values_of_the_wrong_type_become_nulls(tmp_path):
    src = good_source(tmp_path)
    folder = FOLDER.format(city="austin")
    write_metadata(
        src,
        {
            f"{folder}/seq_info.csv": ",key,sequence_key,frame_number\n"
            "0,ausgoodf0,good,99999999999\n1,ausgoodf1,good,0x10\n",
            f"{folder}/raw.csv": ",key,lon,lat,ca,captured_at,pano\n"
            "0,ausgoodf0,east,[],,1.5,maybe\n"
            "1,ausgoodf1,-1e1,.5,inf,99999999999999999999,TRUE\n",
        },
    )
    got = rows(build_catalog(src, tmp_path / "catalog", SMALL))

    first, second = got["ausgoodf0"], got["ausgoodf1"]
    assert first["frame_number"] is None and second["frame_number"] is None  # overflow; hex
    assert [first[c] for c in ("lon", "lat", "ca", "captured_at", "pano")] == [None] * 5
    assert (second["lon"], second["lat"], second["ca"]) == (-10.0, 0.5, float("inf"))
    assert second["captured_at"] is None  # beyond int64
    assert first["status"] == "ok"  # no pano flag: the 64x48 shape decides
    assert second["status"] == "pano"  # "TRUE" is a boolean


def test_million_row_csv_for_absent_images_is_read_in_bounded_memory(tmp_path, warm):
    n = 1_000_000
    src = good_source(tmp_path)
    folder = FOLDER.format(city="austin")
    absent = "".join(f"{i},abs{i},s{i // 10},{i % 10}\n" for i in range(n))
    absent_raw = "".join(f"{i},abs{i},x,{i}.5,,y,maybe\n" for i in range(n))
    write_metadata(
        src,
        {
            f"{folder}/seq_info.csv": seq_info("ausgoodf0", "ausgoodf1") + absent,
            f"{folder}/raw.csv": ",key,lon,lat,ca,captured_at,pano\n" + absent_raw,
        },
    )
    del absent, absent_raw

    catalog, peak = peak_bytes(lambda: build_catalog(src, tmp_path / "catalog", SMALL))

    assert catalog.counts == {"ok": 2, "missing": n}
    table = catalog.table()
    ok = table.filter(pc.equal(table.column("status"), "ok")).column("key").to_pylist()
    assert sorted(ok) == ["ausgoodf0", "ausgoodf1"]
    assert peak < 400 * 1024 * 1024  # Python objects per row would be 1.5 GB


def test_empty_headerless_or_repeated_header_csv_is_one_warning(tmp_path, catalog_warnings):
    b = MslsBuilder()
    for city in ("austin", "paris", "zurich", "berlin"):
        b.sequence(city, "good", 1)
    src = b.write(tmp_path / "src")
    austin, paris, zurich, berlin = (
        FOLDER.format(city=c) for c in ("austin", "paris", "zurich", "berlin")
    )
    write_metadata(
        src,
        {
            f"{austin}/seq_info.csv": b"",
            f"{paris}/seq_info.csv": "0,pargoodf0,good,7\n",  # the header line is missing
            f"{zurich}/seq_info.csv": ",key,key,sequence_key\n0,zurgoodf0,zurgoodf0,good\n",
            f"{berlin}/seq_info.csv": seq_info("bergoodf0"),
        },
    )
    catalog = build_catalog(src, tmp_path / "catalog", SMALL)

    assert catalog.counts == {"ok": 1, "no_metadata": 3}
    said = "\n".join(catalog_warnings())
    assert (
        f"msls_metadata.zip:{austin}/seq_info.csv: unparseable CSV (Empty CSV file); its "
        "columns are treated as missing (replace msls_metadata.zip with a fresh copy)"
    ) in said
    assert f"msls_metadata.zip:{paris}/seq_info.csv: no 'key' column" in said
    assert f"msls_metadata.zip:{zurich}/seq_info.csv: header names key more than once" in said
    assert "cataloged as no_metadata" in said

    only_bad = tmp_path / "only_bad"
    shutil.copytree(src, only_bad)
    write_metadata(only_bad, {f"{austin}/seq_info.csv": b""})
    with pytest.raises(SourceError, match=r"no usable seq_info\.csv in the metadata"):
        build_catalog(only_bad, tmp_path / "c2", SMALL)


def test_damaged_or_oversized_csv_costs_its_columns(tmp_path, catalog_warnings, warm):
    src = good_source(tmp_path)
    folder = FOLDER.format(city="austin")
    meta = src / "msls_metadata.zip"
    write_metadata(src, {f"{folder}/seq_info.csv": seq_info("ausgoodf0", "ausgoodf1")})
    raw = ",key,lat\n0,ausgoodf0,1.0\n1,ausgoodf1,2.0\n"
    add_member(meta, f"{folder}/raw.csv", raw)
    declare_size(meta, f"{folder}/raw.csv", 10)  # says 10 bytes: cut there, fails its CRC
    bomb = tmp_path / "csv_bomb.zip"
    write_bomb(bomb, f"{folder}/postprocessed.csv", MAX_CSV_BYTES + (1 << 20))
    shutil.copy(bomb, src / "msls_patch_v1.1.zip")  # patches are read for CSVs too

    catalog, peak = peak_bytes(lambda: build_catalog(src, tmp_path / "catalog", SMALL))

    got = rows(catalog)
    assert got["ausgoodf0"]["status"] == "ok" and got["ausgoodf0"]["lat"] is None
    said = "\n".join(catalog_warnings())
    assert f"msls_metadata.zip:{folder}/raw.csv: BadZipFile: Bad CRC-32" in said
    assert (
        f"msls_patch_v1.1.zip:{folder}/postprocessed.csv: declares {MAX_CSV_BYTES + (1 << 20)}"
        f" bytes, over the {MAX_CSV_BYTES}-byte limit"
    ) in said
    assert peak < 16 * 1024 * 1024
