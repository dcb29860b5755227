"""The synthetic source is the real MSLS format, deterministic, and has signal."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from shards.msls import IMAGE_MEMBER
from shards.synthetic import (
    SyntheticConfig,
    plan_synthetic,
    write_synthetic_patch,
    write_synthetic_source,
)

SMALL = SyntheticConfig(n_images=150, n_cities=3, n_test_cities=1, images_per_volume=60, seed=3)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    write_synthetic_source(path, SMALL)
    return path


def members(raw) -> dict[str, tuple[str, bytes]]:
    out = {}
    for volume in sorted(raw.glob("msls_images_vol_*.zip")):
        with zipfile.ZipFile(volume) as zf:
            out.update({name: (volume.name, zf.read(name)) for name in zf.namelist()})
    return out


def csvs(raw) -> dict[str, list[list[str]]]:
    with zipfile.ZipFile(raw / "msls_metadata.zip") as zf:
        return {n: list(csv.reader(io.StringIO(zf.read(n).decode()))) for n in zf.namelist()}


def test_layout_and_images_match_the_plan(raw):
    plan = {p.member: p for p in plan_synthetic(SMALL)}
    found = members(raw)
    assert set(found) == set(plan)
    for name, (_, data) in list(found.items())[::10]:
        assert IMAGE_MEMBER.match(name)
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.size == (plan[name].width, plan[name].height)


def test_csvs_have_the_msls_shape(raw):
    tables = csvs(raw)
    folders = {name.rsplit("/", 1)[0] for name in tables}
    for folder in folders:
        names = {n.rsplit("/", 1)[1] for n in tables if n.startswith(folder + "/")}
        expected = {"seq_info.csv", "subtask_index.csv"}
        if folder.startswith("train_val/"):
            expected |= {"raw.csv", "postprocessed.csv"}
        assert names == expected, folder
        keys = None
        for name in names:
            rows = tables[f"{folder}/{name}"]
            assert rows[0][0] == "" and rows[0][1] == "key"
            column = [r[1] for r in rows[1:]]
            assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(column))]
            keys = keys or column
            assert column == keys  # the four files align by index
    raw_rows = next(v for k, v in tables.items() if k.endswith("/raw.csv"))
    assert {r[raw_rows[0].index("pano")] for r in raw_rows[1:]} <= {"True", "False"}


def test_every_image_has_a_seq_info_row_and_vice_versa(raw):
    rows = {
        (name.rsplit("/", 1)[0], row[1])
        for name, table in csvs(raw).items()
        if name.endswith("seq_info.csv")
        for row in table[1:]
    }
    images = {(m.rsplit("/", 2)[0], m.rsplit("/", 1)[1][:-4]) for m in members(raw)}
    assert rows == images


def test_checksums_match_the_files(raw):
    for line in (raw / "msls_checksums.md5").read_text().splitlines():
        md5, name = line.split()
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5


def test_deterministic_and_idempotent(raw, tmp_path):
    write_synthetic_source(tmp_path, SMALL)
    for path in raw.glob("*"):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*")}
    write_synthetic_source(tmp_path, SMALL)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*")} == stamps


def test_cities_look_different_and_nights_are_darker(raw):
    plan = {p.member: p for p in plan_synthetic(SMALL)}
    colours: dict[str, list] = {}
    brightness = {True: [], False: []}
    for name, (_, data) in members(raw).items():
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 24)), float)
        if not plan[name].night:
            colours.setdefault(plan[name].city, []).append(pixels[:8].mean((0, 1)))
        brightness[plan[name].night].append(pixels.mean())
    means = [np.mean(v, 0) for v in colours.values()]
    gaps = [np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]]
    assert min(gaps) > 10  # sky colour alone separates the cities
    assert np.mean(brightness[True]) < 0.5 * np.mean(brightness[False])


def test_a_city_spans_two_volumes(raw):
    volumes: dict[str, set[str]] = {}
    for name, (volume, _) in members(raw).items():
        volumes.setdefault(name.split("/")[1], set()).add(volume)
    assert any(len(v) == 2 for v in volumes.values())


def test_patch_overrides_members_and_is_listed(tmp_path):
    write_synthetic_source(tmp_path, SMALL)
    patch = write_synthetic_patch(tmp_path, SMALL, n_replaced=5)
    with zipfile.ZipFile(patch) as zf:
        replaced = {name: zf.read(name) for name in zf.namelist()}
    originals = members(tmp_path)
    assert len(replaced) == 5 and set(replaced) <= set(originals)
    assert all(replaced[n] != originals[n][1] for n in replaced)
    assert patch.name in (tmp_path / "msls_checksums.md5").read_text()
