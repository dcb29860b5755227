"""A source photo as a viewer shows it: header facts, and the one strict decode.

A photo is judged by decoding it, never by its last bytes: phones append trailers after
the JPEG end marker (MPO pictures, Samsung's SEFT), which every viewer ignores, while a
frame cut short and re-terminated still ends in FFD9. The catalog reads only headers
(`read_header`: size as displayed, pixel count); the shard writer decodes each photo
once (`decode_photo`), strictly, and anything that does not decode cleanly raises
`PhotoError` with the reason, so no damaged pixels reach a shard.

What a viewer shows, and so what we store:
- EXIF orientation (1-8) applied: a portrait phone photo stored sideways is upright.
- An embedded ICC profile (Adobe RGB, Display P3, a grey profile) converted to sRGB.
  CMYK JPEGs are converted naively (libjpeg-turbo, as PIL does): their profile is not
  applied.
- Greyscale, 16-bit (scaled to 8 bits, not clipped) and palette images become RGB;
  transparency is composited over white, as a browser page shows it.
- Any format PIL reads, whatever the file's extension (a PNG named .jpg).
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import simplejpeg
from PIL import Image, ImageCms, UnidentifiedImageError

JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG followed by more pictures (phones, 3D cameras)
ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
JPEG_METADATA_SCAN = 1 << 17  # EXIF and ICC segments precede the frame: within its first 128 KB
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Warning)


class PhotoError(ValueError):
    """A photo we do not use; the message says why, `status` how dataset.json counts it."""

    def __init__(self, reason: str, status: str = "decode_failed") -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class PhotoHeader:
    """What a photo's header says, without decoding its pixels."""

    format: str  # PIL's name: "JPEG", "MPO", "PNG", ...
    mode: str  # PIL's mode: "RGB", "L", "CMYK", "I;16", "P", ...
    stored: tuple[int, int]  # (width, height) of the pixels in the file
    orientation: int  # EXIF orientation, 1 (as stored) to 8
    icc: bytes | None  # the embedded ICC profile

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed: orientations 5-8 swap the sides."""
        width, height = self.stored
        return (height, width) if self.orientation >= 5 else (width, height)

    @property
    def is_jpeg(self) -> bool:
        return self.format in JPEG_FORMATS


def read_header(data: bytes) -> PhotoHeader:
    """The header of an image in any format PIL reads; PhotoError if there is none.

    Raises PhotoError with status "corrupt", or "too_large" for a header past PIL's
    pixel-bomb guard.
    """
    plain = _plain_jpeg_header(data)
    if plain is not None:
        return plain
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return PhotoHeader(
                    image.format, image.mode, image.size, _orientation(image),
                    image.info.get("icc_profile") or None,
                )  # fmt: skip
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"pixel bomb: {exc}", "too_large") from None
    except UnidentifiedImageError:  # its message holds an object address: not reproducible
        raise PhotoError("undecodable: not a recognised image format", "corrupt") from None
    except DECODE_ERRORS as exc:
        raise PhotoError(f"undecodable: {exc}", "corrupt") from None


def _plain_jpeg_header(data: bytes) -> PhotoHeader | None:
    """The header of a JPEG with no EXIF and no ICC profile, from libjpeg-turbo alone
    (PIL's parse costs ~10% of a strip); None for anything else."""
    head = data[:JPEG_METADATA_SCAN]
    if not head.startswith(b"\xff\xd8") or b"Exif\0" in head or b"ICC_PROFILE\0" in head:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # PIL's parse says what is wrong with it
    mode = {"Gray": "L", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colorspace, "RGB")
    return PhotoHeader("JPEG", mode, (width, height), 1, None)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation; 1 where there is none or it is unreadable (as viewers do)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": viewers show it as stored
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_photo(data: bytes, header: PhotoHeader, min_size: tuple[int, int]) -> Image.Image:
    """The upright picture, at least `min_size` (width, height as displayed) where the
    photo has that many pixels: RGB, or L for greyscale. Raises PhotoError.

    JPEGs go through libjpeg-turbo in strict mode, scaled down in the decode (1/2, 1/4,
    1/8); a warning (corrupt data, premature end) refuses the photo. Other formats go
    through PIL with every warning an error and no truncated-image tolerance.
    """
    width, height = min_size if header.orientation < 5 else min_size[::-1]
    if header.is_jpeg:
        image = _decode_jpeg(data, header, (width, height))
    else:
        image = _decode_other(data, header)
    if header.orientation in UPRIGHT:
        image = image.transpose(UPRIGHT[header.orientation])
    return image


def _decode_jpeg(data: bytes, header: PhotoHeader, min_size: tuple[int, int]) -> Image.Image:
    grey = header.mode == "L"
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if grey else "RGB", fastdct=True, fastupsample=True,
            min_width=min_size[0], min_height=min_size[1], strict=True,
        )  # fmt: skip
    except ValueError as exc:
        raise PhotoError(f"undecodable JPEG: {exc}") from None
    return Image.fromarray(pixels[..., 0] if grey else pixels)


def _decode_other(data: bytes, header: PhotoHeader) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sized by catalog
            image = Image.open(io.BytesIO(data))
            image.load()
    except DECODE_ERRORS as exc:
        raise PhotoError(f"undecodable {header.format}: {exc}") from None
    return _displayable(image)


def _displayable(image: Image.Image) -> Image.Image:
    """RGB or L pixels of what a viewer shows for `image` (any PIL mode)."""
    if image.mode in SIXTEEN_BIT:  # 16-bit grey: keep the top 8 bits, never clip at 255
        wide = np.asarray(image, dtype=np.int64)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    if image.mode == "F":
        raise PhotoError("unsupported: floating-point pixels (mode F)")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def to_srgb(image: Image.Image, header: PhotoHeader) -> Image.Image:
    """`image` (RGB or L, as decoded) as sRGB RGB, through its ICC profile if it has one.

    A profile that does not parse, or does not fit the pixels, is ignored, as viewers do.
    """
    if header.icc is not None and header.mode in ("RGB", "L") and image.mode == header.mode:
        transform = _transform(header.icc, image.mode)
        if transform is not None:
            return ImageCms.applyTransform(image, transform)
    return image.convert("RGB")


@lru_cache(maxsize=16)
def _transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """ICC profile -> sRGB (perceptual); None for sRGB itself or a profile that fails."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):
            return None
        return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def reduced(size: tuple[int, int], crop_height: float, resolution: int) -> tuple[int, int]:
    """The smallest (width, height) a photo of `size` may be decoded to and still give
    `resolution` pixels across a crop `crop_height` pixels high."""
    zoom = resolution / crop_height
    return math.ceil(size[0] * zoom), math.ceil(size[1] * zoom)
