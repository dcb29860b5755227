"""The one place a source photo is decoded and resized (once, at shard time).

A stored sample is the smallest image that still supports the train-time
augmentation: a `strip_aspect`:1 strip (default 2:1, e.g. 128x64 at 64 px) cut from the
middle of the photo. Training takes a random `resolution`-wide window of it, which is
the original project's `RandomAffine(translate=(0.2, 0))` + `CenterCrop` + `Resize`
done once up front instead of on every full-size decode: on a 640x480 photo the
window moves +-21% of the width, as the original's did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import simplejpeg
from PIL import Image

from shards.geometry import RESOLUTIONS, strip_box, strip_size
from shards.options import option
from shards.photo import PhotoError, decode_photo, read_header, reduced, to_srgb

# A strip enlarged more than this is mostly interpolation, blur that would teach G blur:
# such a photo (under ~35 px high at 64 px; MSLS's smallest are 256) is dropped, too_small.
MAX_ENLARGEMENT = 4


@dataclass(frozen=True)
class ShardConfig:
    """How samples are cut and packed. Part of the dataset version id."""

    resolution: int = option(64, "Training resolution, pixels (64 or 128).")
    strip_aspect: int = 2  # stored width = strip_aspect * resolution
    crop_fraction: float = 0.55  # crop side / photo height (original: 256 of 480 = 0.53)
    jpeg_quality: int = 95
    shard_size: int = option(5000, "Samples per shard tar (~40 MB at 64 px).")
    include_panos: bool = option(False, "Keep panoramas (dropped by default).")

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        if self.strip_aspect < 1:
            raise ValueError(f"strip_aspect must be >= 1, got {self.strip_aspect}")
        if not 0.1 <= self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}")
        if not 50 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [50, 100], got {self.jpeg_quality}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    @property
    def strip_size(self) -> tuple[int, int]:
        """(width, height) of a stored sample."""
        return strip_size(self.resolution, self.strip_aspect)

    def strip_box(self, width: float, height: float) -> tuple[float, float, float, float]:
        """The centred crop (left, top, right, bottom) in source pixels that becomes the strip."""
        return strip_box(width, height, self.crop_fraction, self.strip_aspect)

    def as_dict(self) -> dict:
        return asdict(self)


def make_strip(data: bytes, config: ShardConfig) -> bytes:
    """Decode a photo once at reduced scale, cut the strip, return it as JPEG bytes.

    libjpeg-turbo (through simplejpeg) decodes straight to 1/2, 1/4 or 1/8 scale; we
    ask for the smallest scale that still leaves at least the output's resolution
    inside the crop (about 2x faster than a full decode of a 640x480 MSLS photo, and
    ~1.3x faster than PIL's `draft` doing the same), then resample with bicubic
    (antialiased) for the final step. The strip is what a viewer shows of the photo
    (shards/photo.py: upright, sRGB); raises PhotoError for a photo that does not
    decode cleanly, or one so small that its strip would be mostly interpolation.
    """
    header = read_header(data)
    width, height = header.size
    left, top, right, bottom = config.strip_box(width, height)
    if (bottom - top) * MAX_ENLARGEMENT < config.resolution:
        raise PhotoError(
            f"too small: {width}x{height} gives a {bottom - top:.1f} px crop, enlarged over "
            f"{MAX_ENLARGEMENT}x to the {config.resolution} px training size",
            "too_small",
        )
    image = decode_photo(data, header, reduced(header.size, bottom - top, config.resolution))
    scale = image.size[0] / width
    box = (left * scale, top * scale, right * scale, bottom * scale)
    strip = to_srgb(image.resize(config.strip_size, Image.Resampling.BICUBIC, box=box), header)
    return simplejpeg.encode_jpeg(
        np.asarray(strip), quality=config.jpeg_quality, colorsubsampling="444"
    )
