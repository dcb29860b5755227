"""The few rules of sample geometry, written once for every layer.

A stored sample is a `strip_aspect`:1 strip cut from the middle of a photo
(shards/imaging.py); training takes a random square window of it (gan/augment.py);
display and evaluation take its centre window (`centre_window`).
"""

from __future__ import annotations

from typing import TypeVar

RESOLUTIONS = (64, 128)  # train image sides, pixels: the DCGAN-64 stack and its 128 variant

Pixels = TypeVar("Pixels")  # a numpy array or a torch tensor, [..., H, W]


def strip_size(resolution: int, strip_aspect: int) -> tuple[int, int]:
    """(width, height) in pixels of a stored sample."""
    return strip_aspect * resolution, resolution


def strip_box(
    width: float, height: float, crop_fraction: float, strip_aspect: int
) -> tuple[float, float, float, float]:
    """The centred crop (left, top, right, bottom) in source pixels that becomes the strip.

    Its height is `crop_fraction` of the photo's (less where the photo is too narrow for
    a `strip_aspect`:1 strip of that height).
    """
    side = min(crop_fraction * height, width / strip_aspect)
    strip_w = side * strip_aspect
    left, top = (width - strip_w) / 2, (height - side) / 2
    return left, top, left + strip_w, top + side


def centre_window(strips: Pixels) -> Pixels:
    """[..., R, W] strips -> their centre R x R windows, [..., R, R] (a view)."""
    side, width = strips.shape[-2], strips.shape[-1]
    left = (width - side) // 2
    return strips[..., left : left + side]
