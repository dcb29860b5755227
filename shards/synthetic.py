"""An offline MSLS: the real distribution's zips and CSVs, filled with drawn street scenes.

So every flow runs for real on a fresh machine with no network. Scenes are drawn with
numpy (no per-pixel Python): a sky gradient, a road in perspective, facades with
window grids and trees, in a palette and layout of each city's own so a classifier can
tell cities apart. Night frames are dark with lit windows. Frames of a sequence are the
same scene with the camera moving forward. Deterministic per seed, byte for byte.

CSV columns follow mapillary/mapillary_sls (its loader reads `seq_info.csv`,
`raw.csv`, `postprocessed.csv` and `subtask_index.csv` with `index_col=0`), as
described in DESIGN.md; values are plausible, not Mapillary's.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shards.atomic import atomic_path, write_text
from shards.parallel import parallel_map

DEFAULT_CITIES = (
    "austin",
    "bangkok",
    "budapest",
    "helsinki",
    "melbourne",
    "moscow",
    "phoenix",
    "sf",
)
MORE_CITIES = (
    "amman", "amsterdam", "boston", "goa", "london", "manila", "nairobi", "ottawa",
    "paris", "saopaulo", "tokyo", "toronto", "trondheim", "zurich", "berlin", "cph",
)  # fmt: skip
TEST_CITIES = ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala")
SIZES = ((640, 480), (640, 480), (640, 480), (640, 480), (480, 640), (512, 384), (256, 256))
KEY_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
ZIP_TIME = (2020, 4, 27, 0, 0, 0)
CHECKSUMS = "msls_checksums.md5"
SUBTASKS = ("all", "summer2winter", "winter2summer", "day2night", "night2day", "old2new", "new2old")
PATCH = "msls_patch_v1.1.zip"


@dataclass(frozen=True)
class SyntheticConfig:
    n_images: int = 2000  # approximate total
    n_cities: int = 8  # first DEFAULT_CITIES (sf, an MSLS val city, exercises the ood split)
    n_test_cities: int = 0  # cities under test/ (images, seq_info and subtask_index only)
    seed: int = 0
    images_per_volume: int = 900  # the default gives 3 volumes, with cities spanning two
    pano_fraction: float = 0.03
    night_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.n_images < 1 or self.images_per_volume < 1:
            raise ValueError("n_images and images_per_volume must be >= 1")
        if not 1 <= self.n_cities <= len(DEFAULT_CITIES) + len(MORE_CITIES):
            raise ValueError(f"n_cities must be in [1, {len(DEFAULT_CITIES) + len(MORE_CITIES)}]")
        if not 0 <= self.n_test_cities <= len(TEST_CITIES):
            raise ValueError(f"n_test_cities must be in [0, {len(TEST_CITIES)}]")

    def cities(self) -> list[tuple[str, str]]:
        """(subset, city) pairs."""
        names = (DEFAULT_CITIES + MORE_CITIES)[: self.n_cities]
        return [("train_val", c) for c in names] + [
            ("test", c) for c in TEST_CITIES[: self.n_test_cities]
        ]


@dataclass(frozen=True)
class SyntheticImage:
    """One planned image: everything its CSV rows say, plus how to draw it."""

    key: str
    city: str
    subset: str
    folder: str
    sequence_key: str
    frame_number: int
    width: int
    height: int
    pano: bool
    night: bool
    lat: float
    lon: float
    ca: float
    captured_at: int
    scene: int  # seed of the sequence's scene

    @property
    def member(self) -> str:
        return f"{self.subset}/{self.city}/{self.folder}/images/{self.key}.jpg"


def _key(rng: np.random.Generator) -> str:
    return "".join(rng.choice(KEY_ALPHABET, 22))


def plan_synthetic(config: SyntheticConfig) -> list[SyntheticImage]:
    """Every image of the source, in archive order (city by city)."""
    rng = np.random.default_rng(config.seed)
    cities = config.cities()
    per_city = max(3, config.n_images // len(cities))
    plan: list[SyntheticImage] = []
    for c, (subset, city) in enumerate(cities):
        centre = (rng.uniform(-60, 60), rng.uniform(-150, 150))
        count = 0
        while count < per_city:
            length = int(rng.integers(3, 13))
            plan += _sequence(rng, subset, city, centre, length, config, c)
            count += length
    return plan


def _sequence(rng, subset, city, centre, length, config, city_index) -> list[SyntheticImage]:
    seq, scene = _key(rng), int(rng.integers(2**31))
    folder = "query" if rng.random() < 0.3 else "database"
    pano = bool(rng.random() < config.pano_fraction)
    width, height = (1024, 512) if pano else SIZES[int(rng.integers(len(SIZES)))]
    night, heading = bool(rng.random() < config.night_fraction), float(rng.uniform(0, 360))
    lat, lon = centre[0] + rng.normal(0, 0.05), centre[1] + rng.normal(0, 0.05)
    start = int(1_400_000_000_000 + rng.integers(0, 200_000_000_000))
    step = np.radians(heading)
    return [
        SyntheticImage(_key(rng), city, subset, folder, seq, f, width, height, pano, night,
                       round(lat + 1e-4 * f * np.cos(step), 7),
                       round(lon + 1e-4 * f * np.sin(step), 7),
                       round(heading, 2), start + 2000 * f, scene * 64 + city_index)
        for f in range(length)
    ]  # fmt: skip


def _palette(city: str) -> dict[str, np.ndarray | float]:
    """A city's look, fixed by its name: colours and layout parameters."""
    rng = np.random.default_rng(int(hashlib.sha256(city.encode()).hexdigest()[:8], 16))
    return {
        "sky_top": rng.uniform(40, 200, 3), "sky_low": rng.uniform(150, 255, 3),
        "facades": rng.uniform(30, 230, (3, 3)), "road": rng.uniform(40, 110, 1).repeat(3),
        "green": np.array([40.0, rng.uniform(90, 160), 40.0]), "horizon": rng.uniform(0.35, 0.55),
        "height": rng.uniform(0.15, 0.45), "road_width": rng.uniform(0.25, 0.6),
        "trees": rng.uniform(0, 0.6),
    }  # fmt: skip


def render_image(image: SyntheticImage) -> bytes:
    """Draw `image` at half size with numpy, upscale, encode as JPEG (deterministic)."""
    p = _palette(image.city)
    rng = np.random.default_rng(image.scene)
    w, h = image.width // 2, image.height // 2
    zoom = 1.0 + 0.06 * image.frame_number  # moving forward: the scene grows about the horizon
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = 0.5 + (x / w - 0.5) / zoom, p["horizon"] + (y / h - p["horizon"]) / zoom
    t = np.clip(y / p["horizon"], 0, 1)[..., None]
    out = (p["sky_top"] * (1 - t) + p["sky_low"] * t).astype(np.float32)
    below = y > p["horizon"]
    spread = np.clip((y - p["horizon"]) / (1 - p["horizon"]), 0, None)
    out[below] = p["road"] * 1.2
    road = below & (np.abs(x - 0.5) < spread * p["road_width"])
    out[road] = p["road"]
    out[road & (np.abs(x - 0.5) < spread * 0.01) & ((y * 40 / zoom) % 1 < 0.5)] = 230
    windows = ((x * 60) % 1 < 0.45) & ((y * 45) % 1 < 0.5)
    facade = np.zeros(windows.shape, bool)
    for side in (-1, 1):
        out = _facades(out, facade, x, y, side, p, rng, windows)
    out = out * (0.25 if image.night else 1.0) + rng.standard_normal(out.shape, np.float32) * 4
    if image.night:
        out = _lit_windows(out, facade & windows, x, y)
    small = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    small.resize((image.width, image.height), Image.Resampling.BILINEAR).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def _facades(out, facade, x, y, side, p, rng, windows) -> np.ndarray:
    """Buildings along one side of the road, each with a window grid; trees in front.

    x grows along columns and y along rows, so every building is a slice of the image.
    """
    xs, ys = x[0], y[:, 0]
    edge = 0.5 + side * 0.5 * p["road_width"]
    bounds = np.concatenate([[0.0], np.sort(rng.uniform(0.15, 1.2, 3))])  # from the kerb out
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        left, right = sorted((edge + side * a * 0.5, edge + side * b * 0.5))
        top = p["horizon"] - p["height"] * rng.uniform(0.5, 1.3)
        cols = slice(*np.searchsorted(xs, (left, right)))
        rows = slice(*np.searchsorted(ys, (top, p["horizon"] + 0.05)))
        block = out[rows, cols]
        block[:] = p["facades"][(i + (side > 0)) % 3]
        block[windows[rows, cols]] *= 0.45
        facade[rows, cols] = True
        if rng.random() < p["trees"]:
            centre = (left + right) / 2
            cols = slice(*np.searchsorted(xs, (centre - 0.03, centre + 0.03)))
            rows = slice(*np.searchsorted(ys, (p["horizon"] - 0.04, p["horizon"] + 0.08)))
            out[rows, cols] = p["green"]
    return out


def _lit_windows(out, windows, x, y) -> np.ndarray:
    """About a third of the windows are lit at night."""
    out[windows & ((x * 7 + y * 13) % 1 < 0.35)] = (255, 220, 140)
    return out


def _csvs(rows: list[SyntheticImage], subset: str) -> dict[str, str]:
    """The four CSVs of one folder (test folders: seq_info and subtask_index only)."""

    def table(header: str, line) -> str:
        return header + "\n" + "".join(f"{i},{line(r)}\n" for i, r in enumerate(rows))

    csvs = {
        "seq_info": table(",key,sequence_key,frame_number",
                          lambda r: f"{r.key},{r.sequence_key},{r.frame_number}"),
        "subtask_index": table(",key," + ",".join(SUBTASKS),
                               lambda r: f"{r.key},True,False,False,{r.night},False,False,False"),
    }  # fmt: skip
    if subset == "train_val":
        csvs["raw"] = table(
            ",key,lon,lat,ca,captured_at,pano",
            lambda r: f"{r.key},{r.lon},{r.lat},{r.ca},{r.captured_at},{r.pano}",
        )
        csvs["postprocessed"] = table(",key,utm,night,control_panel,view_direction,unique_cluster",
                                      lambda r: f'{r.key},"[{r.lon * 1e4:.2f}, {r.lat * 1e4:.2f}]",'
                                      f"{r.night},False,Forward,{r.captured_at % 997}")  # fmt: skip
    return csvs


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, ZIP_TIME)
    info.external_attr = 0o644 << 16
    return info


def _write_zip(path: Path, members: Iterator[tuple[str, bytes]], compress: int) -> None:
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, data in members:
            zf.writestr(_zip_entry(name), data, compress_type=compress)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums_match(raw_dir: Path) -> bool:
    listing = raw_dir / CHECKSUMS
    if not listing.exists():
        return False
    entries = [line.split() for line in listing.read_text().splitlines() if line.strip()]
    return all((raw_dir / name).exists() and _md5(raw_dir / name) == md5 for md5, name in entries)


def write_synthetic_source(
    raw_dir: Path, config: SyntheticConfig = SyntheticConfig()
) -> list[Path]:
    """Write the source into `raw_dir` (a no-op if it is already there and intact)."""
    raw_dir = Path(raw_dir)
    plan = plan_synthetic(config)
    volumes = [
        plan[i : i + config.images_per_volume]
        for i in range(0, len(plan), config.images_per_volume)
    ]
    paths = [raw_dir / f"msls_images_vol_{n + 1}.zip" for n in range(len(volumes))]
    paths.append(raw_dir / "msls_metadata.zip")
    if _checksums_match(raw_dir):
        return paths
    images = iter(parallel_map(render_image, plan, "drawing synthetic MSLS"))
    for path, volume in zip(paths, volumes):
        _write_zip(path, ((image.member, next(images)) for image in volume), zipfile.ZIP_STORED)
    _write_zip(paths[-1], _metadata_members(plan), zipfile.ZIP_DEFLATED)
    write_text(raw_dir / CHECKSUMS, "".join(f"{_md5(p)}  {p.name}\n" for p in paths))
    return paths


def _metadata_members(plan: list[SyntheticImage]) -> Iterator[tuple[str, bytes]]:
    folders: dict[tuple[str, str, str], list[SyntheticImage]] = {}
    for image in plan:
        folders.setdefault((image.subset, image.city, image.folder), []).append(image)
    for (subset, city, folder), rows in sorted(folders.items()):
        for name, text in _csvs(rows, subset).items():
            yield f"{subset}/{city}/{folder}/{name}.csv", text.encode()


def write_synthetic_patch(raw_dir: Path, config: SyntheticConfig, n_replaced: int = 20) -> Path:
    """msls_patch_v1.1.zip: redrawn versions of `n_replaced` images under their old names."""
    plan = plan_synthetic(config)[:n_replaced]
    redrawn = [SyntheticImage(**{**image.__dict__, "scene": image.scene + 1}) for image in plan]
    path = Path(raw_dir) / PATCH
    _write_zip(path, ((image.member, render_image(image)) for image in redrawn), zipfile.ZIP_STORED)
    listing = Path(raw_dir) / CHECKSUMS
    kept = [line for line in listing.read_text().splitlines() if not line.endswith(PATCH)]
    write_text(listing, "\n".join([*kept, f"{_md5(path)}  {PATCH}"]) + "\n")
    return path
