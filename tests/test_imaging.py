"""Cutting the stored strip: size, placement, and the one-decode path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shards.imaging import ShardConfig, make_strip
from tests.msls_builder import jpeg


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("resolution", [64, 128])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (256, 256), (1024, 512), (512, 384)])
def test_strip_has_the_stored_size(resolution, size):
    config = ShardConfig(resolution=resolution)
    strip = decode(make_strip(jpeg(*size), config))
    assert strip.shape == (resolution, 2 * resolution, 3)


def test_box_on_a_640x480_photo_moves_the_window_like_the_original():
    left, top, right, bottom = ShardConfig().strip_box(640, 480)
    side = bottom - top
    assert side == pytest.approx(0.55 * 480)
    assert right - left == pytest.approx(2 * side)
    assert (left + right) / 2 == pytest.approx(320) and (top + bottom) / 2 == pytest.approx(240)
    # the square window slides side/2 either way of centre: ~21% of the width, as RandomAffine(0.2)
    assert (side / 2) / 640 == pytest.approx(0.206, abs=0.01)


def test_strip_shows_the_middle_of_the_photo():
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[:, :320] = (255, 0, 0)  # left half red, right half blue
    photo[:, 320:] = (0, 0, 255)
    out = io.BytesIO()
    Image.fromarray(photo).save(out, format="JPEG", quality=95)
    strip = decode(make_strip(out.getvalue(), ShardConfig())).astype(int)
    assert strip[:, :60, 0].mean() > 200 and strip[:, :60, 2].mean() < 60
    assert strip[:, -60:, 2].mean() > 200 and strip[:, -60:, 0].mean() < 60


def test_grayscale_photo_becomes_rgb():
    out = io.BytesIO()
    Image.new("L", (640, 480), 128).save(out, format="JPEG")
    assert decode(make_strip(out.getvalue(), ShardConfig())).shape == (64, 128, 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("resolution", 96, "resolution must be one of"),
        ("shard_size", 0, "shard_size must be >= 1"),
        ("crop_fraction", 2.0, "crop_fraction"),
        ("jpeg_quality", 10, "jpeg_quality"),
    ],
)
def test_bad_config_is_one_line(field, value, message):
    with pytest.raises(ValueError, match=message):
        ShardConfig(**{field: value})
