"""An offline MSLS: the real distribution's zips and CSVs, filled with drawn street scenes.

So every flow (catalog, split, shard, train) runs for real on a fresh machine with no
network. Here: what the source holds (cities, sequences, frames, CSV rows) and writing
its zips; the scenes themselves are drawn by shards/streetscape.py. The same config
gives the same bytes.

CSV headers are the real ones, verified against code that reads the real files:
mapillary_sls/datasets/msls.py (github.com/mapillary/mapillary_sls) reads `key`,
`sequence_key`, `frame_number`, `easting`, `northing`, `night`, `view_direction`
("Sideways"), `pano` and the subtask columns `all s2w w2s o2n n2o d2n n2d`, all with
`index_col=0`; a third-party MSLS reader asserts the exact header lines written here.
The subtask column order and every value are plausible inventions, not Mapillary's.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import zipfile
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from shards.atomic import atomic_path, write_text
from shards.checksums import CHECKSUMS_NAME, md5_of, read_checksums
from shards.cities import (
    ALL_TRAIN_VAL_CITIES,
    DEFAULT_CITIES,
    TEST_CENTRES,
    TEST_CITIES,
    TRAIN_VAL_CENTRES,
)
from shards.options import option
from shards.parallel import cpu_count
from shards.progress import track
from shards.streetscape import SyntheticImage, render_image

SIZES = ((640, 480),) * 6 + ((480, 640), (512, 384), (256, 256))  # MSLS: 256x256 to 640x480
PANO_SIZE = (1024, 512)
VIEWS = ("Forward", "Sideways", "Backward")  # postprocessed.csv view_direction values
VIEW_TURN = {"Forward": 0.0, "Sideways": 90.0, "Backward": 180.0}  # camera vs travel, degrees
SUBTASKS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")
CSV_COLUMNS = {  # after the unnamed index and `key`; test/ folders have the first two only
    "seq_info": ("sequence_key", "frame_number"),
    "subtask_index": SUBTASKS,
    "raw": ("lon", "lat", "ca", "captured_at", "pano"),
    "postprocessed": ("easting", "northing", "unique_cluster", "control_panel", "night",
                      "view_direction"),
}  # fmt: skip
KEY_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
ZIP_TIME = (2020, 4, 27, 0, 0, 0)  # fixed member time: same config, same bytes
METADATA = "msls_metadata.zip"
PATCH = "msls_patch_v1.1.zip"
PATCH_SEED = 7_919  # added to the seed: redrawn pixels for the patch's members


@dataclass(frozen=True)
class SyntheticConfig:
    n_images: int = option(2000, "Images in the synthetic source (approximate, all cities).",
                           name="synthetic_images")  # fmt: skip
    n_cities: int = option(8, "Cities in the synthetic source.", name="synthetic_cities")
    n_test_cities: int = 0  # cities under test/ (images, seq_info and subtask_index only)
    seed: int = option(0, "Seed of the synthetic source's drawings.", name="synthetic_seed")
    images_per_volume: int = 900  # the default: 3 volumes; helsinki and sf span two each
    pano_fraction: float = 0.03
    night_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.n_images < 1 or self.images_per_volume < 1:
            raise ValueError("n_images and images_per_volume must be >= 1")
        if not 1 <= self.n_cities <= len(ALL_TRAIN_VAL_CITIES):
            raise ValueError(f"n_cities must be in [1, {len(ALL_TRAIN_VAL_CITIES)}]")
        if not 0 <= self.n_test_cities <= len(TEST_CITIES):
            raise ValueError(f"n_test_cities must be in [0, {len(TEST_CITIES)}]")

    def cities(self) -> list[tuple[str, str]]:
        """(subset, city) pairs in archive order."""
        rest = [c for c in ALL_TRAIN_VAL_CITIES if c not in DEFAULT_CITIES]
        names = [*DEFAULT_CITIES, *rest][: self.n_cities]
        tests = TEST_CITIES[: self.n_test_cities]
        return [("train_val", c) for c in names] + [("test", c) for c in tests]


def _utm(lat: float, lon: float) -> tuple[float, float]:
    """(easting, northing) in metres: a spherical approximation of UTM, plausible."""
    meridian, phi = np.floor((lon + 180) / 6) * 6 - 177, np.radians(lat)
    east = 500_000 + 0.9996 * 6_378_137 * np.cos(phi) * np.radians(lon - meridian)
    north = 0.9996 * 6_367_449 * phi + (10_000_000 if lat < 0 else 0)
    return round(float(east), 3), round(float(north), 3)


def _key(rng: np.random.Generator) -> str:
    return "".join(rng.choice(KEY_ALPHABET, 22))  # Mapillary-like: 22 of [A-Za-z0-9_-]


def plan_synthetic(config: SyntheticConfig) -> list[SyntheticImage]:
    """Every image of the source in archive order: city by city, sequence by sequence."""
    rng = np.random.default_rng(config.seed)
    cities = config.cities()
    per_city = max(3, round(config.n_images / len(cities)))
    plan: list[SyntheticImage] = []
    for subset, city in cities:
        count = 0
        while count < per_city:
            length = max(3, min(int(rng.integers(3, 13)), per_city - count))
            plan += _sequence(rng, config, subset, city, length)
            count += length
    return plan


def _sequence(rng, config, subset, city, length) -> list[SyntheticImage]:
    """One sequence: a drive along a street, `length` frames a few metres apart."""
    seq, folder = _key(rng), "query" if rng.random() < 0.25 else "database"
    pano = bool(rng.random() < config.pano_fraction)
    width, height = PANO_SIZE if pano else SIZES[int(rng.integers(len(SIZES)))]
    night = bool(rng.random() < config.night_fraction)
    view = "Forward" if pano else VIEWS[int(rng.choice(3, p=(0.8, 0.15, 0.05)))]
    heading, step = float(rng.uniform(0, 360)), float(rng.uniform(2, 6))
    lat, lon = np.add((TRAIN_VAL_CENTRES | TEST_CENTRES)[city], rng.normal(0, 0.02, 2))
    north = step * np.cos(np.radians(heading)) / 111_320
    east = step * np.sin(np.radians(heading)) / (111_320 * np.cos(np.radians(lat)))
    start, control = _capture_time(rng, night, lon), bool(rng.random() < 0.03)
    ca = round((heading + VIEW_TURN[view]) % 360, 2)
    return [
        SyntheticImage(_key(rng), city, subset, folder, seq, f, width, height, pano, night,
                       round(float(lat + f * north), 7), round(float(lon + f * east), 7), ca,
                       start + 1500 * f, view, control)
        for f in range(length)
    ]  # fmt: skip


def _capture_time(rng: np.random.Generator, night: bool, lon: float) -> int:
    """Epoch ms of a local daytime (or night-time) hour on a day in 2014-2019."""
    day = 1_388_534_400 + int(rng.integers(0, 6 * 365)) * 86_400
    hour = rng.uniform(20, 27) if night else rng.uniform(8, 17)  # local; 27 is 3am next day
    return int((day + (hour - lon / 15) * 3600) * 1000)


def _csvs(rows: list[SyntheticImage], subset: str) -> dict[str, str]:
    """One folder's CSVs as pandas `to_csv` writes them (test folders: the first two)."""
    records = [_record(r) for r in rows]
    names = list(CSV_COLUMNS)[: 4 if subset == "train_val" else 2]
    return {
        name: ",".join(("", "key", *CSV_COLUMNS[name])) + "\n" + "".join(
            ",".join(map(str, (i, rec["key"], *(rec[c] for c in CSV_COLUMNS[name])))) + "\n"
            for i, rec in enumerate(records)
        )
        for name in names
    }  # fmt: skip


def _record(r: SyntheticImage) -> dict[str, object]:
    """Every CSV value of one image by column; subtask flags follow season, year, light."""
    when = datetime.fromtimestamp(r.captured_at / 1000, UTC)
    winter = (when.month in (11, 12, 1, 2, 3)) == (r.lat >= 0)  # southern winters mid-year
    east, north = _utm(r.lat, r.lon)
    cluster = int(east // 25) % 100_000 * 1_000_000 + int(north // 25) % 1_000_000  # 25 m cell
    flags = (True, winter, not winter, when.year <= 2016, when.year >= 2018, r.night, not r.night)
    extra = {"easting": east, "northing": north, "unique_cluster": cluster}
    return {**vars(r), **extra, **dict(zip(SUBTASKS, flags))}


def split_volumes(plan: list[SyntheticImage], per_volume: int) -> list[list[SyntheticImage]]:
    """Volumes filled in archive order, `per_volume` images each, so cities straddle two."""
    return [plan[i : i + per_volume] for i in range(0, len(plan), per_volume)]


def _write_zip(path: Path, members: Iterable[tuple[str, bytes]], compress: int) -> None:
    """Atomically write a zip whose bytes depend only on `members` (fixed times, modes)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.create_system, info.external_attr = 3, 0o644 << 16  # unix, rw-r--r--
            zf.writestr(info, data, compress_type=compress)


def _md5(path: Path) -> str:
    return md5_of(path).hexdigest()


def _listed(raw_dir: Path) -> dict[str, str]:
    """File name -> md5 from the checksums file ({} if there is none)."""
    listing = raw_dir / CHECKSUMS_NAME
    return read_checksums(listing) if listing.exists() else {}


def write_synthetic_source(
    raw_dir: Path, config: SyntheticConfig = SyntheticConfig()
) -> list[Path]:
    """Write volumes, metadata and checksums into `raw_dir`; return the zips' paths.

    A no-op when the checksums file lists exactly these zips (and perhaps a patch) and
    they match it: a re-run costs a hash, not a redraw. Otherwise volumes and a patch
    left by another config are removed first, since the catalog reads every volume.
    """
    raw_dir, plan = Path(raw_dir), plan_synthetic(config)
    volumes = split_volumes(plan, config.images_per_volume)
    paths = [raw_dir / f"msls_images_vol_{n}.zip" for n in range(1, len(volumes) + 1)]
    paths.append(raw_dir / METADATA)
    listed = _listed(raw_dir)
    if set(listed) - {PATCH} == {p.name for p in paths} and all(
        (raw_dir / name).is_file() and _md5(raw_dir / name) == md5 for name, md5 in listed.items()
    ):
        return paths
    (raw_dir / CHECKSUMS_NAME).unlink(missing_ok=True)  # never trusted while half rewritten
    for stale in {*raw_dir.glob("msls_images_vol_*.zip"), raw_dir / PATCH} - {*paths}:
        stale.unlink(missing_ok=True)
    with _pool(len(plan)) as pool:
        for path, volume in zip(paths, volumes):  # one volume in memory at a time
            drawn = pool.map(partial(render_image, seed=config.seed), volume, chunksize=8)
            members = zip((image.member for image in volume), track(drawn, len(volume), path.name))
            _write_zip(path, members, zipfile.ZIP_STORED)
    _write_zip(paths[-1], _metadata_members(plan), zipfile.ZIP_DEFLATED)
    write_text(raw_dir / CHECKSUMS_NAME, "".join(f"{_md5(p)}  {p.name}\n" for p in paths))
    return paths


def _pool(n_images: int) -> Executor:
    """Worker processes on every core (one thread for small jobs: start-up dominates).

    Drawing is many short numpy calls that hold the GIL: threads gained 1.2x on 2 cores
    and lost time on 16. fork starts workers for free but can deadlock in a process
    that runs other threads (Prefect's), so there forkserver, whose workers import the
    main module (scripts need the `if __name__ == "__main__":` guard).
    """
    workers = min(cpu_count(), n_images // 100)
    if workers < 2:
        return ThreadPoolExecutor(1)
    alone = sys.platform == "linux" and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if alone else "forkserver")
    return ProcessPoolExecutor(workers, mp_context=context)


def _metadata_members(plan: list[SyntheticImage]) -> list[tuple[str, bytes]]:
    folders: dict[tuple[str, str, str], list[SyntheticImage]] = {}
    for image in plan:
        folders.setdefault((image.subset, image.city, image.folder), []).append(image)
    return sorted(
        (f"{subset}/{city}/{folder}/{name}.csv", text.encode())
        for (subset, city, folder), rows in folders.items()
        for name, text in _csvs(rows, subset).items()
    )


def write_synthetic_patch(raw_dir: Path, config: SyntheticConfig, n_replaced: int = 20) -> Path:
    """msls_patch_v1.1.zip: redrawn images under `n_replaced` existing member names.

    Like Mapillary's v1.1 patch, its members override the volumes' members of the same
    name; they are picked evenly across the archive so several cities change. Its md5
    is added to the checksums file (rewritten atomically).
    """
    raw_dir, plan = Path(raw_dir), plan_synthetic(config)
    chosen = plan[:: max(1, len(plan) // max(n_replaced, 1))][:n_replaced]
    path = raw_dir / PATCH
    redrawn = ((image.member, render_image(image, config.seed + PATCH_SEED)) for image in chosen)
    _write_zip(path, redrawn, zipfile.ZIP_STORED)
    listed = {**_listed(raw_dir), PATCH: _md5(path)}
    write_text(
        raw_dir / CHECKSUMS_NAME, "".join(f"{md5}  {name}\n" for name, md5 in listed.items())
    )
    return path
