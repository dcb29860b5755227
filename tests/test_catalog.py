"""The catalog: every image gets one row with a status; bad input never crashes it."""

from __future__ import annotations

import struct
import zipfile

import pytest

from shards.catalog import CatalogConfig, build_catalog
from shards.msls import SourceError
from tests.msls_builder import MslsBuilder, Row, jpeg

SMALL = CatalogConfig(workers=1)


def statuses(catalog) -> dict[str, str]:
    table = catalog.table()
    return dict(zip(table.column("key").to_pylist(), table.column("status").to_pylist()))


def pixel_bomb() -> bytes:
    """A JPEG header claiming 60000x60000 pixels (3.6 GP) in a few hundred bytes."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


@pytest.fixture
def bad_source(tmp_path):
    b = MslsBuilder()
    b.sequence("austin", "seqA", 3)
    b.image("austin", Row("zero", "seqB"), b"")
    b.image("austin", Row("trunc", "seqB", 1), jpeg(seed=5)[:-400])
    b.image("austin", Row("garbage", "seqB", 2), b"this is not an image at all")
    b.image("austin", Row("bomb", "seqB", 3), pixel_bomb())
    b.image("austin", Row("nocsv", "seqB", 4), jpeg(seed=6), csv=False)
    b.image("austin", Row("nozip", "seqB", 5), None)
    b.image("austin", Row("pano1", "seqC", 0, pano=True), jpeg(128, 64, seed=7))
    b.image("paris", Row("dupkey", "seqD"), jpeg(seed=8))
    b.image("zurich", Row("dupkey", "seqE"), jpeg(seed=9))
    return b.write(tmp_path / "src")


def test_every_bad_input_gets_its_status(bad_source, tmp_path):
    catalog = build_catalog(bad_source, tmp_path / "catalog", SMALL)
    got = statuses(catalog)
    assert got["zero"] == "corrupt"
    assert got["trunc"] == "ok"  # a sound header: its pixels are judged by the shard writer
    assert got["garbage"] == "corrupt"
    assert got["bomb"] == "too_large"
    assert got["nocsv"] == "no_metadata"
    assert got["nozip"] == "missing"
    assert got["pano1"] == "pano"
    dup = sorted(r["status"] for r in catalog.table().to_pylist() if r["key"] == "dupkey")
    assert dup == ["duplicate", "ok"]
    assert catalog.counts["ok"] == 5  # three frames of seqA, trunc, the first dupkey


def test_reasons_are_given_for_every_bad_row(bad_source, tmp_path):
    rows = build_catalog(bad_source, tmp_path / "catalog", SMALL).table().to_pylist()
    for row in rows:
        assert (row["status"] == "ok") == (row["reason"] is None), row
    reasons = {r["key"]: r["reason"] for r in rows}
    assert "zero-byte" in reasons["zero"]
    assert "not a recognised image format" in reasons["garbage"]


def test_metadata_is_joined_and_typed(bad_source, tmp_path):
    rows = {
        r["key"]: r for r in build_catalog(bad_source, tmp_path / "c", SMALL).table().to_pylist()
    }
    first = rows["ausseqAf0"]
    assert first["city"] == "austin" and first["sequence_key"] == "seqA"
    assert first["frame_number"] == 0 and first["night"] is False and first["pano"] is False
    assert isinstance(first["lat"], float) and first["view_direction"] == "Forward"
    assert (first["width"], first["height"]) == (64, 48)


def test_same_source_twice_reads_nothing_and_gives_same_hash(bad_source, tmp_path):
    first = build_catalog(bad_source, tmp_path / "catalog", SMALL)
    mtime = first.path.stat().st_mtime_ns
    second = build_catalog(bad_source, tmp_path / "catalog", SMALL)
    assert second.hash == first.hash and second.path.stat().st_mtime_ns == mtime
    again = build_catalog(bad_source, tmp_path / "other", SMALL)  # no pointer: recomputed
    assert again.hash == first.hash


def test_patch_zip_overrides_and_changes_the_hash(tmp_path):
    b = MslsBuilder()
    b.sequence("austin", "s1", 2)
    src = b.write(tmp_path / "src")
    before = build_catalog(src, tmp_path / "catalog", SMALL)
    with zipfile.ZipFile(src / "msls_patch_v1.1.zip", "w") as zf:
        zf.writestr("train_val/austin/database/images/auss1f0.jpg", jpeg(80, 60, seed=99))
    after = build_catalog(src, tmp_path / "catalog", SMALL)
    assert after.hash != before.hash
    row = next(r for r in after.table().to_pylist() if r["key"] == "auss1f0")
    assert row["archive"] == "msls_patch_v1.1.zip" and row["width"] == 80


def test_hostile_member_names_are_ignored_and_nothing_is_written(tmp_path):
    b = MslsBuilder()
    b.sequence("austin", "s1", 2)
    b.members["msls_images_vol_1.zip"]["../../evil.jpg"] = jpeg()
    b.members["msls_images_vol_1.zip"]["/abs/evil.jpg"] = jpeg()
    b.members["msls_images_vol_1.zip"]["train_val/../../x/query/images/k.jpg"] = jpeg()
    src = b.write(tmp_path / "src")
    before = sorted(p for p in tmp_path.rglob("*"))
    catalog = build_catalog(src, tmp_path / "catalog", SMALL)
    assert catalog.counts == {"ok": 2}
    created = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(p.is_relative_to(tmp_path / "catalog") for p in created)


def test_tolerates_missing_and_extra_columns_and_bad_values(tmp_path):
    b = MslsBuilder()
    b.sequence("austin", "s1", 2)
    src = b.write(tmp_path / "src")
    meta = src / "msls_metadata.zip"
    with zipfile.ZipFile(meta, "w") as zf:
        zf.writestr(
            "train_val/austin/database/seq_info.csv",
            ",key,sequence_key,frame_number,extra\n0,auss1f0,s1,zero,x\n1,auss1f1,s1,1,y\n",
        )
        zf.writestr(
            "train_val/austin/database/raw.csv", b",key,lat\n0,auss1f0,\xff\xfe\n1,auss1f1,5.5\n"
        )
    rows = {r["key"]: r for r in build_catalog(src, tmp_path / "c", SMALL).table().to_pylist()}
    assert rows["auss1f0"]["frame_number"] is None and rows["auss1f1"]["frame_number"] == 1
    assert rows["auss1f0"]["lat"] is None and rows["auss1f1"]["lat"] == 5.5
    assert rows["auss1f0"]["night"] is None  # no postprocessed.csv at all
    assert {r["status"] for r in rows.values()} == {"ok"}


def test_extracted_tree_is_read_like_the_zips(tmp_path):
    b = MslsBuilder()
    b.sequence("austin", "s1", 3)
    src = b.write(tmp_path / "src")
    tree = tmp_path / "tree"
    for archive in src.glob("*.zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tree)
    from_zips = build_catalog(src, tmp_path / "c1", SMALL).table()
    from_tree = build_catalog(tree, tmp_path / "c2", SMALL).table()
    assert (
        from_tree.column("status").to_pylist()
        == from_zips.column("status").to_pylist()
        == ["ok"] * 3
    )
    assert from_tree.column("width").to_pylist() == from_zips.column("width").to_pylist()


def test_not_a_source_is_one_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no msls_images_vol"):
        build_catalog(tmp_path, tmp_path / "catalog", SMALL)
    (tmp_path / "msls_images_vol_1.zip").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match=r"msls_images_vol_1\.zip: not a readable zip"):
        build_catalog(tmp_path, tmp_path / "catalog", SMALL)
