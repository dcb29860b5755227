"""Photos judged by decoding them (#14, faults 1 and 2, and their kind).

Valid but unusual photos give the strip a viewer shows; broken but plausible ones are
dropped with their reason and counted in dataset.json, and no damaged pixel reaches a
shard. The reference for "what a viewer shows" is PIL with EXIF orientation and the
ICC profile applied.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

from shards.catalog import CatalogConfig, inspect_image
from shards.dataset import load_info
from shards.imaging import ShardConfig, make_strip
from shards.layout import DataLayout
from shards.photo import PhotoError
from shards.pipeline import prepare_dataset
from shards.split import SplitConfig
from shards.verify import verify_dataset
from tests.msls_builder import MslsBuilder, Row

CONFIG = ShardConfig()
TRAILER = b"\x00" * 16 + b"SEFHtrailer" + bytes(range(256)) * 2 + b"SEFT"  # Samsung-style


def photo(width: int = 320, height: int = 240) -> Image.Image:
    """Four flat quadrants (red, green, blue, white): orientation and colour both show."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = (220, 30, 30)
    pixels[: height // 2, width // 2 :] = (30, 200, 30)
    pixels[height // 2 :, : width // 2] = (30, 30, 220)
    pixels[height // 2 :, width // 2 :] = (240, 240, 240)
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str = "JPEG", **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}), **save)
    return out.getvalue()


def strip(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(make_strip(data, CONFIG))).convert("RGB")).astype(int)


def viewer_strip(image: Image.Image) -> np.ndarray:
    """The strip of what a viewer shows: `image` upright, re-encoded losslessly as PNG."""
    return strip(encoded(ImageOps.exif_transpose(image).convert("RGB"), "PNG"))


def close(a: np.ndarray, b: np.ndarray, tolerance: float = 4.0) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).mean()) < tolerance


# ---------------------------------------------------------------- valid but unusual


def test_a_trailer_after_the_end_marker_changes_nothing():
    data = encoded(photo())
    assert inspect_image(data + TRAILER, 10**8)["status"] == "ok"
    assert make_strip(data + TRAILER, CONFIG) == make_strip(data, CONFIG)


def test_a_multi_picture_file_shows_its_first_picture():
    first, second = encoded(photo()), encoded(photo().rotate(180))
    assert make_strip(first + second, CONFIG) == make_strip(first, CONFIG)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    stored = photo(320, 240)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(stored, exif=exif.tobytes())
    reference = viewer_strip(Image.open(io.BytesIO(data)))
    assert close(strip(data), reference)
    header_size = (240, 320) if orientation >= 5 else (320, 240)
    info = inspect_image(data, 10**8)
    assert (info["width"], info["height"]) == header_size  # the catalog's size is upright too


def test_an_icc_profile_is_converted_to_srgb():
    data = encoded(photo(), icc_profile=swapped_primaries_icc())
    got = strip(data)
    # the profile says the file's red channel is blue: a viewer shows the red quadrant blue
    top_left = got[8:24, 8:40].reshape(-1, 3).mean(0)
    assert top_left[2] > 150 and top_left[0] < 80, top_left
    assert close(strip(encoded(photo(), icc_profile=srgb_icc())), strip(encoded(photo())))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: encoded(photo(), progressive=True), id="progressive"),
        pytest.param(lambda: encoded(photo(), subsampling=0), id="4:4:4"),
        pytest.param(lambda: encoded(photo().convert("CMYK")), id="cmyk"),
        pytest.param(lambda: encoded(photo(), "PNG"), id="png-named-jpg"),
        pytest.param(lambda: encoded(photo(), "WEBP", lossless=True), id="webp"),
        pytest.param(lambda: encoded(photo(), "BMP"), id="bmp"),
        pytest.param(lambda: encoded(photo().convert("P"), "PNG"), id="palette"),
        pytest.param(lambda: encoded(photo(4000, 3000)), id="12-megapixel"),
    ],
)
def test_unusual_but_valid_photos_give_the_viewers_strip(make):
    data = make()
    assert inspect_image(data, 10**8)["status"] == "ok"
    assert close(strip(data), viewer_strip(Image.open(io.BytesIO(data))), tolerance=6.0)


def test_greyscale_stays_grey():
    grey = photo().convert("L")
    got = strip(encoded(grey))
    assert np.abs(got[..., 0] - got[..., 2]).max() <= 2
    assert close(got, viewer_strip(grey))


def test_sixteen_bit_grey_is_scaled_not_clipped():
    level = np.full((240, 320), 30000, np.uint16)  # 46% grey; clipped to 8 bits it is white
    data = encoded(Image.fromarray(level), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    assert abs(strip(data).mean() - 30000 / 257) < 2


def test_transparency_is_shown_over_white():
    rgba = photo().convert("RGBA")
    rgba.putalpha(0)  # fully transparent: the colour underneath must not show
    assert strip(encoded(rgba, "PNG")).min() >= 250


def test_small_photos_are_kept_until_they_would_be_mostly_interpolation():
    assert strip(encoded(photo(64, 48))).shape == (64, 128, 3)  # enlarged 2.4x: kept
    with pytest.raises(PhotoError, match=r"too small: 24x18 gives a 9.9 px crop") as error:
        make_strip(encoded(photo(24, 18)), CONFIG)
    assert error.value.status == "too_small"


# ---------------------------------------------------------------- broken but plausible


def cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2] + b"\xff\xd9"  # a partial download, re-terminated


def zeroed_third(data: bytes) -> bytes:
    damaged = bytearray(data)
    n = len(damaged)
    damaged[n // 3 : 2 * n // 3] = bytes(n // 3)
    return bytes(damaged)


def broken_png_crc(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 40
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


BROKEN = {
    "cut_in_half": lambda: cut_in_half(encoded(photo())),
    "zeroed_third": lambda: zeroed_third(encoded(photo())),
    "truncated": lambda: encoded(photo())[:-500],
    "truncated_progressive": lambda: encoded(photo(), progressive=True)[:-500],
    "cut_progressive_with_marker": lambda: cut_in_half(encoded(photo(), progressive=True)),
    "truncated_png": lambda: encoded(photo(), "PNG")[:-300],
    "png_bad_crc": lambda: broken_png_crc(encoded(photo(), "PNG")),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_photo_that_does_not_decode_cleanly_is_refused(name):
    data = BROKEN[name]()
    with pytest.raises(PhotoError) as error:
        make_strip(data, CONFIG)
    assert error.value.status == "decode_failed" and str(error.value).startswith("undecodable")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", "corrupt"),
        (bytes(5000), "corrupt"),  # a zero-filled file
        (b"\xff\xd8\xff\xe0" + bytes(200), "corrupt"),  # SOI, then nothing sensible
        (b"<html>403 Forbidden</html>", "corrupt"),
    ],
)
def test_headers_that_are_not_images_are_corrupt_in_the_catalog(data, status):
    assert inspect_image(data, 10**8)["status"] == status


def test_a_version_keeps_the_trailer_city_and_drops_every_damaged_photo(tmp_path):
    """case1 + case2 end to end: counts in dataset.json, nothing damaged in a shard."""
    b = MslsBuilder()
    for s in range(4):
        for f in range(3):
            base = photo().rotate(90 * f)
            b.image("paris", Row(f"par{s}f{f}", f"par{s}", f), encoded(base) + TRAILER)
            b.image("austin", Row(f"aus{s}f{f}", f"aus{s}", f), encoded(base))
    broken = {f"bad{i}": make() for i, make in enumerate(BROKEN.values())}
    for key, data in broken.items():
        b.image("austin", Row(key, "badseq", int(key[3:])), data)
    b.image("austin", Row("tiny", "badseq", 99), encoded(photo(24, 18)))
    layout = DataLayout.at(tmp_path / "data")
    _, path = prepare_dataset(
        b.write(tmp_path / "src"), layout, SplitConfig(val_fraction=0.25),
        ShardConfig(shard_size=4), CatalogConfig(workers=1),
    )  # fmt: skip
    info = load_info(layout)
    assert info.cities == ["austin", "paris"]
    assert sum(info.counts["train"].values()) + sum(info.counts.get("val", {}).values()) == 24
    assert info.dropped == {"decode_failed": len(broken), "too_small": 1}
    assert {f["key"] for f in info.decode_failures} == {*broken, "tiny"}
    assert all(f["reason"] for f in info.decode_failures)
    assert verify_dataset(path).ok
    stored = {member.partition(".")[0] for member in _members(path) if member.endswith(".jpg")}
    assert not stored & {*broken, "tiny"} and len(stored) == 24


def _members(path) -> list[str]:
    import tarfile

    names = []
    for tar_path in path.rglob("*.tar"):
        with tarfile.open(tar_path) as tar:
            names += tar.getnames()
    return names


# ---------------------------------------------------------------- ICC profiles, built here


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _icc(primaries: tuple, name: str) -> bytes:
    """A v2 RGB display profile: three colorants (D50 XYZ) and gamma 2.2 curves."""
    text = name.encode() + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8 + 3 + 67)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(2.2 * 256)) + bytes(2)
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"cprt", b"text" + bytes(8))]
    tags += [(c + b"XYZ", _xyz(*p)) for c, p in zip((b"r", b"g", b"b"), primaries)]
    tags += [(c + b"TRC", curve) for c in (b"r", b"g", b"b")]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", offset + len(body)) + bytes(4) + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ " + bytes(12) + b"acsp" + bytes(28)
        + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48)
    )  # fmt: skip
    return header + struct.pack(">I", len(tags)) + table + body


SRGB_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def swapped_primaries_icc() -> bytes:
    """A profile whose red colorant is sRGB's blue and blue sRGB's red."""
    red, green, blue = SRGB_D50
    return _icc((blue, green, red), "swapped primaries")


def srgb_icc() -> bytes:
    return _icc(SRGB_D50, "sRGB built by the tests")
