"""An offline MSLS: the real distribution's zips and CSVs, filled with drawn street scenes.

So every flow (catalog, split, shard, train) runs for real on a fresh machine with no
network. Scenes are drawn with numpy in true perspective (per-row and per-column
vectors broadcast to masks, no per-pixel Python): a sky gradient, a road with lane
markings running to a vanishing point, facades with window grids on both sides, trees,
in a palette and layout of each city's own so that a linear classifier tells cities
apart. Night frames are dark with lit windows. Frames of a sequence are one street with
the camera moving forward. The same config gives the same bytes.

CSV headers are the real ones, verified against code that reads the real files:
mapillary_sls/datasets/msls.py (github.com/mapillary/mapillary_sls) reads `key`,
`sequence_key`, `frame_number`, `easting`, `northing`, `night`, `view_direction`
("Sideways"), `pano` and the subtask columns `all s2w w2s o2n n2o d2n n2d`, all with
`index_col=0`; a third-party MSLS reader asserts the exact header lines written here.
The subtask column order and every value are plausible inventions, not Mapillary's.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import sys
import threading
import zipfile
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from shards.atomic import atomic_path, write_text
from shards.options import option
from shards.parallel import cpu_count
from shards.progress import track

# (lat, lon) of each city; the names and order are mapillary_sls's default_cities.
TRAIN_VAL_CENTRES = {
    "trondheim": (63.43, 10.40), "london": (51.51, -0.13), "boston": (42.36, -71.06),
    "melbourne": (-37.81, 144.96), "amsterdam": (52.37, 4.90), "helsinki": (60.17, 24.94),
    "tokyo": (35.68, 139.69), "toronto": (43.65, -79.38), "saopaulo": (-23.55, -46.63),
    "moscow": (55.76, 37.62), "zurich": (47.37, 8.54), "paris": (48.86, 2.35),
    "bangkok": (13.76, 100.50), "budapest": (47.50, 19.04), "austin": (30.27, -97.74),
    "berlin": (52.52, 13.40), "ottawa": (45.42, -75.70), "phoenix": (33.45, -112.07),
    "goa": (15.50, 73.83), "amman": (31.95, 35.93), "nairobi": (-1.29, 36.82),
    "manila": (14.60, 120.98), "cph": (55.68, 12.57), "sf": (37.77, -122.42),
}  # fmt: skip
TEST_CENTRES = {
    "miami": (25.76, -80.19), "athens": (37.98, 23.73), "buenosaires": (-34.60, -58.38),
    "stockholm": (59.33, 18.07), "bengaluru": (12.97, 77.59), "kampala": (0.35, 32.58),
}  # fmt: skip
ALL_TRAIN_VAL_CITIES = tuple(TRAIN_VAL_CENTRES)  # 22 train cities, then val: cph, sf
TEST_CITIES = tuple(TEST_CENTRES)
# sf is one of MSLS's own val cities: the default source then exercises the ood split.
DEFAULT_CITIES = (
    "austin", "bangkok", "budapest", "helsinki", "melbourne", "moscow", "phoenix", "sf",
)  # fmt: skip

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
CHECKSUMS = "msls_checksums.md5"
METADATA = "msls_metadata.zip"
PATCH = "msls_patch_v1.1.zip"
PATCH_SEED = 7_919  # added to the seed: redrawn pixels for the patch's members
CAMERA_HEIGHT, STEP, FAR = 2.0, 3.0, 150.0  # metres: camera above road, per frame, horizon


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


@dataclass(frozen=True)
class SyntheticImage:
    """One planned image: everything its CSV rows say about it (the drawing follows)."""

    key: str
    city: str
    subset: str  # "train_val" | "test"
    folder: str  # "query" | "database"
    sequence_key: str
    frame_number: int
    width: int
    height: int
    pano: bool
    night: bool
    lat: float
    lon: float
    ca: float  # compass angle of the camera, degrees clockwise from north
    captured_at: int  # epoch milliseconds, UTC
    view_direction: str  # one of VIEWS
    control_panel: bool  # the dashboard is in view (drawn as a dark band at the bottom)

    @property
    def member(self) -> str:
        return f"{self.subset}/{self.city}/{self.folder}/images/{self.key}.jpg"


def _utm(lat: float, lon: float) -> tuple[float, float]:
    """(easting, northing) in metres: a spherical approximation of UTM, plausible."""
    meridian, phi = np.floor((lon + 180) / 6) * 6 - 177, np.radians(lat)
    east = 500_000 + 0.9996 * 6_378_137 * np.cos(phi) * np.radians(lon - meridian)
    north = 0.9996 * 6_367_449 * phi + (10_000_000 if lat < 0 else 0)
    return round(float(east), 3), round(float(north), 3)


def _stable_int(text: str) -> int:
    """A seed from a name (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


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


@lru_cache(maxsize=64)
def _style(city: str) -> dict:
    """A city's look, fixed by its name: colours and street layout.

    Sky hues step by the golden ratio through the city list, so neighbours in the list
    (which share volumes and plots) never look alike.
    """
    rng = np.random.default_rng(_stable_int(city))
    names = (*ALL_TRAIN_VAL_CITIES, *TEST_CITIES)
    hue = (names.index(city) * 0.618 if city in names else rng.random()) % 1
    facade_hues = (hue + 0.5 + rng.uniform(-0.15, 0.15, 4)) % 1
    return {
        "sky_top": _hsv(hue, rng.uniform(0.4, 0.7), rng.uniform(0.55, 0.8)),
        "sky_low": _hsv(hue, rng.uniform(0.1, 0.3), 0.94),
        "facades": np.stack([_hsv(h, rng.uniform(0.2, 0.6), rng.uniform(0.4, 0.9))
                             for h in facade_hues]),
        "road": np.full(3, rng.uniform(50, 120)), "kerb": np.full(3, rng.uniform(130, 200)),
        "green": _hsv(rng.uniform(0.22, 0.38), 0.6, rng.uniform(0.3, 0.6)),
        "horizon": rng.uniform(0.38, 0.55), "storeys": rng.uniform(2, 10),
        "road_half": rng.uniform(3, 9), "sidewalk": rng.uniform(1.5, 5), "trees": rng.random(),
    }  # fmt: skip


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """RGB in 0..240 (headroom for the grain, added without overflow checks)."""
    rgb = np.clip(np.abs((h * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
    return 240 * v * (1 - s + s * rgb)


def render_image(image: SyntheticImage, seed: int) -> bytes:
    """JPEG bytes (quality 90) of `image`; the same (image, seed) gives the same bytes.

    The street comes from (seed, sequence_key), so frames of a sequence show one street
    and only the camera position (frame_number) differs.
    """
    rng = np.random.default_rng([seed, _stable_int(image.sequence_key)])
    pixels = _draw(image, _style(image.city), rng)
    buffer = io.BytesIO()
    size = (image.width, image.height)
    Image.frombuffer("RGB", size, pixels, "raw", "RGBX", 0, 1).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _pack(rgb) -> np.ndarray:
    """RGB (..., 3) in 0..255 to one little-endian uint32 per pixel: R, G, B, 0.

    Whole pixels as one integer: numpy is ~40x slower on an innermost axis of 3.
    """
    return (np.asarray(rgb).astype(np.uint32) @ np.array([1, 256, 65536], np.uint32)).astype("<u4")


# Film grain: one fixed tile, repeated once here; fresh noise per image cost more than drawing.
GRAIN = np.tile(_pack(np.random.default_rng(12345).integers(0, 9, (256, 256, 3))), (4, 6))


def _draw(image: SyntheticImage, s: dict, rng: np.random.Generator) -> np.ndarray:
    """Packed RGBX uint32 [H, W]. Rows and columns are rays: dx, dy are tangents."""
    w, h = image.width, image.height
    f = (0.25 if image.pano else 0.55) * w  # focal length, pixels (panoramas: very wide)
    horizon = h * (s["horizon"] + rng.normal(0, 0.02))
    dx = ((np.arange(w) + 0.5 - w / 2 + rng.normal(0, 0.03) * w) / f).astype(np.float32)
    dy = ((np.arange(h) + 0.5 - horizon) / f).astype(np.float32)  # > 0 below the horizon
    cam = image.frame_number * STEP  # the camera drives forward along the street
    t = np.clip((dy + 0.6) / 0.6, 0, 1)[:, None]  # sky gradient down to the horizon
    out = np.empty((h, w), "<u4")
    out[:] = _pack(s["sky_top"] * (1 - t) + s["sky_low"] * t)[:, None]
    ground = int(np.searchsorted(dy, 0, side="right"))  # first row below the horizon
    _road(out[ground:], dx, dy[ground:], cam, s)
    lit = _facades(out, dx, dy, cam, s, rng, image.night)
    _trees(out, lit, dx, horizon, f, cam, s, rng)
    if image.control_panel:
        out[int(h * 0.88) :] = _pack((35, 35, 35))
    if image.night:
        out >>= 2
        out &= 0x3F3F3F3F  # every channel divided by 4 at once
        out[lit] = _pack((240, 205, 130))
    oy, ox = (rng.integers(0, 256, 2) + image.frame_number * 37) % 256
    out += GRAIN[oy : oy + h, ox : ox + w]
    return out  # channels <= 240 plus grain <= 8: no carry between bytes


def _road(out: np.ndarray, dx: np.ndarray, dy: np.ndarray, cam: float, s: dict) -> None:
    """Sidewalk, road, dashed centre line and edge lines on the ground rows (in place).

    A ground row at tangent dy lies CAMERA_HEIGHT / dy metres ahead; a point X metres to
    the side is in column dx = X * dy / CAMERA_HEIGHT, so every mask is a 1D row vector
    compared with a 1D column vector.
    """
    ahead, ax, scale = CAMERA_HEIGHT / dy, np.abs(dx)[None, :], (dy / CAMERA_HEIGHT)[:, None]
    out[:] = _pack(s["kerb"])
    out[ax < s["road_half"] * scale] = _pack(s["road"])
    dashes = ((ahead + cam) % 9 < 4.5)[:, None]
    out[(ax < 0.12 * scale) & dashes] = _pack((225, 225, 225))
    out[np.abs(ax - (s["road_half"] - 0.4) * scale) < 0.1 * scale] = _pack((215, 215, 215))


def _facades(out, dx, dy, cam, s, rng, night: bool) -> np.ndarray:
    """Buildings on both sides (in place); returns the mask of windows lit at night.

    The facade planes stand `road_half + sidewalk` metres to each side, so column dx
    sees them `distance / |dx|` metres ahead, where a building's own bounds decide its
    height and colour: all per column, then 2D masks from a row and a column vector.
    """
    side = s["road_half"] + s["sidewalk"]
    ahead = np.minimum(side / np.maximum(np.abs(dx), 1e-6), FAR).astype(np.float32)
    height, colour = np.zeros_like(dx), np.zeros((dx.size, 3))
    for cols in (dx < 0, dx >= 0):
        widths = rng.uniform(8, 25, 24)  # 24 buildings cover FAR plus the longest drive
        bounds = np.cumsum(widths) - widths[0] * rng.random()
        tall = 3 * s["storeys"] * rng.uniform(0.5, 1.5, 24) * (rng.random(24) > 0.12)
        which = np.clip(np.searchsorted(bounds, ahead[cols] + cam), 0, 23)
        height[cols] = tall[which]
        shade = 0.75 if cols[0] else 1.0  # one side in shadow
        colour[cols] = s["facades"][(which + int(cols[0])) % 4] * shade
    top, bottom = (CAMERA_HEIGHT - height) / ahead, CAMERA_HEIGHT / ahead
    wall = (dy[:, None] >= top[None, :]) & (dy[:, None] < bottom[None, :])
    np.copyto(out, _pack(colour)[None, :], where=wall)
    storeys = (CAMERA_HEIGHT - dy[:, None] * ahead[None, :]) / 3.0  # height above pavement
    phase = storeys - storeys.astype(np.int32)  # fraction of a storey (>= 0 where it counts)
    bay = ((ahead + cam) % 4.0 < 2.2) & (ahead < 60)
    windows = wall & bay[None, :] & (phase > 0.33) & (phase < 0.73) & (storeys > 1.07)
    windows &= storeys < ((height - 0.6) / 3.0)[None, :]
    np.copyto(out, _pack(colour * 0.45)[None, :], where=windows)
    if not night:
        return windows
    index = storeys.astype(np.int32) * 13 + ((ahead + cam) // 4.0).astype(np.int32)[None, :] * 7
    return windows & (index % 5 < 2)  # two windows in five are lit


def _trees(out, lit, dx, horizon, f, cam, s, rng) -> None:
    """Street trees on the sidewalk (in place): a trunk and a round crown each."""
    if s["trees"] < 0.3:
        return
    spacing, x = 30 * (1.1 - s["trees"]), s["road_half"] + s["sidewalk"] * 0.5
    for sign in (-1, 1):
        for z in np.arange(rng.uniform(0, spacing), FAR, spacing) - cam:
            if z < 3 or z > 80:
                continue
            col = (sign * x / z - dx[0]) * f  # dx[0] carries the camera's yaw
            r, cy = f * 1.8 / z, horizon + f * (CAMERA_HEIGHT - 4.5) / z
            trunk = np.s_[max(int(cy), 0) : int(horizon + f * CAMERA_HEIGHT / z),
                          max(int(col - r / 8), 0) : max(int(col + r / 8) + 1, 0)]  # fmt: skip
            out[trunk], lit[trunk] = _pack((60, 50, 40)), False
            _disc(out, lit, col, cy, r, _pack(s["green"]))


def _disc(out, lit, cx: float, cy: float, r: float, colour: np.ndarray) -> None:
    """Fill a disc, touching only its bounding box."""
    top, left = max(int(cy - r), 0), max(int(cx - r), 0)
    box = np.s_[top : max(int(cy + r) + 1, 0), left : max(int(cx + r) + 1, 0)]
    rows, cols = out[box].shape
    yy, xx = np.ogrid[top : top + rows, left : left + cols]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    out[box][inside], lit[box][inside] = colour, False


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
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _listed(raw_dir: Path) -> dict[str, str]:
    """File name -> md5 from the checksums file ({} if there is none)."""
    listing = raw_dir / CHECKSUMS
    lines = listing.read_text().splitlines() if listing.exists() else []
    return {name: md5 for md5, name in (line.split() for line in lines if line.strip())}


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
    (raw_dir / CHECKSUMS).unlink(missing_ok=True)  # never trusted while half rewritten
    for stale in {*raw_dir.glob("msls_images_vol_*.zip"), raw_dir / PATCH} - {*paths}:
        stale.unlink(missing_ok=True)
    with _pool(len(plan)) as pool:
        for path, volume in zip(paths, volumes):  # one volume in memory at a time
            drawn = pool.map(partial(render_image, seed=config.seed), volume, chunksize=8)
            members = zip((image.member for image in volume), track(drawn, len(volume), path.name))
            _write_zip(path, members, zipfile.ZIP_STORED)
    _write_zip(paths[-1], _metadata_members(plan), zipfile.ZIP_DEFLATED)
    write_text(raw_dir / CHECKSUMS, "".join(f"{_md5(p)}  {p.name}\n" for p in paths))
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
    write_text(raw_dir / CHECKSUMS, "".join(f"{md5}  {name}\n" for name, md5 in listed.items()))
    return path
