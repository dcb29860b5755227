"""Drawn street scenes for the synthetic MSLS source (shards/synthetic.py plans them).

Scenes are drawn with numpy in true perspective (per-row and per-column vectors
broadcast to masks, no per-pixel Python): a sky gradient, a road with lane markings
running to a vanishing point, facades with window grids on both sides, trees, in a
palette and layout of each city's own so that a linear classifier tells cities apart.
Night frames are dark with lit windows. Frames of a sequence are one street with the
camera moving forward. The same (image, seed) gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from shards.cities import ALL_TRAIN_VAL_CITIES, TEST_CITIES

CAMERA_HEIGHT, STEP, FAR = 2.0, 3.0, 150.0  # metres: camera above road, per frame, horizon


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
    view_direction: str  # one of shards.synthetic.VIEWS
    control_panel: bool  # the dashboard is in view (drawn as a dark band at the bottom)

    @property
    def member(self) -> str:
        return f"{self.subset}/{self.city}/{self.folder}/images/{self.key}.jpg"


def stable_int(text: str) -> int:
    """A seed from a name (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@lru_cache(maxsize=64)
def _style(city: str) -> dict:
    """A city's look, fixed by its name: colours and street layout.

    Sky hues step by the golden ratio through the city list, so neighbours in the list
    (which share volumes and plots) never look alike.
    """
    rng = np.random.default_rng(stable_int(city))
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
    rng = np.random.default_rng([seed, stable_int(image.sequence_key)])
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
