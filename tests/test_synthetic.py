"""The synthetic source is the real MSLS format, deterministic, and has signal."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
import shutil
import zipfile
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from shards.synthetic import (
    ALL_TRAIN_VAL_CITIES,
    DEFAULT_CITIES,
    TEST_CITIES,
    SyntheticConfig,
    plan_synthetic,
    render_image,
    split_volumes,
    write_synthetic_patch,
    write_synthetic_source,
)

SMALL = SyntheticConfig(n_images=150, n_cities=3, n_test_cities=1, images_per_volume=70, seed=3)
MEMBER = re.compile(r"^(train_val|test)/([a-z]+)/(query|database)/images/([A-Za-z0-9_-]{22})\.jpg$")
HEADERS = {  # as the real files have them (see the module docstring)
    "seq_info.csv": ",key,sequence_key,frame_number",
    "raw.csv": ",key,lon,lat,ca,captured_at,pano",
    "postprocessed.csv": (
        ",key,easting,northing,unique_cluster,control_panel,night,view_direction"
    ),
    "subtask_index.csv": ",key,all,s2w,w2s,o2n,n2o,d2n,n2d",
}
BOOLEAN_COLUMNS = {"pano", "control_panel", "night", *HEADERS["subtask_index.csv"].split(",")[2:]}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    write_synthetic_source(path, SMALL)
    return path


@pytest.fixture(scope="module")
def images(raw) -> dict[str, tuple[str, bytes]]:
    """Image member name -> (volume file name, bytes)."""
    out = {}
    for volume in sorted(raw.glob("msls_images_vol_*.zip")):
        with zipfile.ZipFile(volume) as zf:
            out.update({name: (volume.name, zf.read(name)) for name in zf.namelist()})
    return out


@pytest.fixture(scope="module")
def tables(raw) -> dict[str, list[list[str]]]:
    with zipfile.ZipFile(raw / "msls_metadata.zip") as zf:
        return {n: list(csv.reader(io.StringIO(zf.read(n).decode()))) for n in zf.namelist()}


def pixels(data: bytes, size=(32, 24)) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(size), float)


def test_city_lists_are_msls():
    assert len(ALL_TRAIN_VAL_CITIES) == 24 and ALL_TRAIN_VAL_CITIES[-2:] == ("cph", "sf")
    assert set(DEFAULT_CITIES) <= set(ALL_TRAIN_VAL_CITIES)
    assert len(TEST_CITIES) == 6 and not set(TEST_CITIES) & set(ALL_TRAIN_VAL_CITIES)


def test_images_follow_the_layout_and_decode_to_the_planned_size(raw, images):
    plan = {p.member: p for p in plan_synthetic(SMALL)}
    assert set(images) == set(plan)
    for name, (volume, data) in images.items():
        assert MEMBER.match(name), name
        with zipfile.ZipFile(raw / volume) as zf:
            assert zf.getinfo(name).compress_type == zipfile.ZIP_STORED
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "JPEG" and image.size == (plan[name].width, plan[name].height)
    assert any(p.pano and p.width == 2 * p.height for p in plan.values())


def test_csvs_have_the_msls_headers_and_align_by_index(tables):
    folders = {name.rsplit("/", 1)[0] for name in tables}
    for folder in folders:
        names = {n.rsplit("/", 1)[1] for n in tables if n.startswith(folder + "/")}
        expected = {"seq_info.csv", "subtask_index.csv"}
        if folder.startswith("train_val/"):
            expected |= {"raw.csv", "postprocessed.csv"}
        assert names == expected, folder  # test cities: seq_info and subtask_index only
        keys = None
        for name in names:
            header, *rows = tables[f"{folder}/{name}"]
            assert ",".join(header) == HEADERS[name]
            assert [r[0] for r in rows] == [str(i) for i in range(len(rows))]
            keys = keys or [r[1] for r in rows]
            assert [r[1] for r in rows] == keys, name  # the four files align by index
            for column, values in zip(header, zip(*rows)):
                if column in BOOLEAN_COLUMNS:
                    assert set(values) <= {"True", "False"}, (name, column)


def test_csv_values_are_plausible(tables):
    for name, (header, *rows) in tables.items():
        row = dict(zip(header, rows[0]))
        if name.endswith("/raw.csv"):
            assert 1.3e12 < int(row["captured_at"]) < 1.6e12  # epoch ms, 2014-2020
            assert 0 <= float(row["ca"]) < 360
        if name.endswith("/postprocessed.csv"):
            assert {r[header.index("view_direction")] for r in rows} <= {
                "Forward",
                "Sideways",
                "Backward",
            }
            assert 100_000 < float(row["easting"]) < 900_000


def test_every_image_has_a_seq_info_row_and_vice_versa(tables, images):
    rows = {
        (name.rsplit("/", 1)[0], row[1])
        for name, table in tables.items()
        if name.endswith("seq_info.csv")
        for row in table[1:]
    }
    found = {(m.rsplit("/", 2)[0], m.rsplit("/", 1)[1][:-4]) for m in images}
    assert rows == found


def test_sequences_are_consecutive_frames(tables):
    for name, (_, *rows) in tables.items():
        if name.endswith("seq_info.csv"):
            frames = defaultdict(list)
            for _, _, sequence, frame in rows:
                frames[sequence].append(int(frame))
            assert all(f == list(range(len(f))) and len(f) >= 3 for f in frames.values())


def test_checksums_match_the_files(raw):
    lines = (raw / "msls_checksums.md5").read_text().splitlines()
    names = set()
    for line in lines:
        md5, name = line.split("  ")
        names.add(name)
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5
    assert names == {p.name for p in raw.glob("*.zip")}


def test_deterministic_and_idempotent(raw, tmp_path):
    write_synthetic_source(tmp_path, SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in raw.iterdir())
    for path in raw.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    paths = write_synthetic_source(tmp_path, SMALL)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    assert [p.name for p in paths] == [
        "msls_images_vol_1.zip",
        "msls_images_vol_2.zip",
        "msls_images_vol_3.zip",
        "msls_metadata.zip",
    ]


def test_a_damaged_source_is_rewritten(tmp_path):
    config = SyntheticConfig(n_images=20, n_cities=2, images_per_volume=12)
    paths = write_synthetic_source(tmp_path, config)
    good = paths[0].read_bytes()
    paths[0].write_bytes(good[:-10])
    (tmp_path / "msls_images_vol_9.zip").write_bytes(b"stale")
    write_synthetic_source(tmp_path, config)
    assert paths[0].read_bytes() == good
    assert not (tmp_path / "msls_images_vol_9.zip").exists()


def test_render_is_deterministic_and_frames_move():
    sequence = [p for p in plan_synthetic(SMALL) if not p.pano][:3]
    assert len({p.sequence_key for p in sequence}) == 1
    assert render_image(sequence[0], 3) == render_image(sequence[0], 3)
    first, second = (pixels(render_image(p, 3)) for p in sequence[:2])
    other = pixels(render_image(sequence[0], 4))
    assert 0 < np.abs(first - second).mean() < np.abs(first - other).mean() + 20


def test_cities_are_told_apart_by_a_linear_classifier(images):
    """Nearest class mean (a linear rule) on 8x6 thumbnails, held-out sequences."""
    plan = {p.member: p for p in plan_synthetic(SMALL)}
    train, held = defaultdict(list), []
    for name, (_, data) in images.items():
        image = plan[name]
        if image.night or image.pano:
            continue
        feature = pixels(data, (8, 6)).ravel()
        if (
            hashlib.md5(image.sequence_key.encode()).digest()[0] % 3 == 0
        ):  # sequences split whole, as our splits are
            held.append((image.city, feature))
        else:
            train[image.city].append(feature)
    means = {city: np.mean(v, 0) for city, v in train.items()}
    guesses = [min(means, key=lambda c: np.sum((f - means[c]) ** 2)) == city for city, f in held]
    assert len(held) > 20 and np.mean(guesses) > 0.9


def test_nights_are_darker_than_days_of_the_same_city(images):
    plan = {p.member: p for p in plan_synthetic(SMALL)}
    brightness = defaultdict(list)
    for name, (_, data) in images.items():
        image = plan[name]
        brightness[image.city, image.night].append(pixels(data).mean())
    cities = {city for city, night in brightness if night and (city, False) in brightness}
    assert cities
    for city in cities:
        assert np.mean(brightness[city, True]) < 0.5 * np.mean(brightness[city, False])


def test_a_city_spans_two_volumes(images):
    volumes = defaultdict(set)
    for name, (volume, _) in images.items():
        volumes[name.split("/")[1]].add(volume)
    assert any(len(v) == 2 for v in volumes.values())


def test_the_default_config_puts_a_city_in_two_volumes():
    config = SyntheticConfig()
    volumes = split_volumes(plan_synthetic(config), config.images_per_volume)
    assert 2 <= len(volumes) <= 3
    cities = [{image.city for image in volume} for volume in volumes]
    assert any(a & b for a, b in itertools.pairwise(cities))


def test_patch_overrides_members_and_is_listed(raw, tmp_path):
    shutil.copytree(raw, tmp_path, dirs_exist_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.zip")}
    patch = write_synthetic_patch(tmp_path, SMALL, n_replaced=5)
    with zipfile.ZipFile(patch) as zf:
        replaced = {name: zf.read(name) for name in zf.namelist()}
    originals = {}
    for volume in tmp_path.glob("msls_images_vol_*.zip"):
        with zipfile.ZipFile(volume) as zf:
            originals.update({n: zf.read(n) for n in zf.namelist()})
    assert len(replaced) == 5 and set(replaced) <= set(originals)
    assert all(replaced[n] != originals[n] for n in replaced)
    assert all(
        Image.open(io.BytesIO(replaced[n])).size == Image.open(io.BytesIO(originals[n])).size
        for n in replaced
    )
    lines = (tmp_path / "msls_checksums.md5").read_text().splitlines()
    listing = {name: md5 for md5, name in (line.split("  ") for line in lines)}
    assert listing[patch.name] == hashlib.md5(patch.read_bytes()).hexdigest()
    assert set(listing) == {*before, patch.name}
    write_synthetic_source(tmp_path, SMALL)  # an intact patched source is left alone
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.zip") if p != patch} == before
