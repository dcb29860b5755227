"""Palette: are the samples' colours as saturated and as contrasty as the photos'?

The two judges of the images cannot see this. D normalises its real and fake batches
apart (BatchNorm after a bias-free first conv and LeakyReLU), so its logits do not
change when a whole batch's contrast does; SWD normalises each descriptor set per
channel (docs/QUALITY.md, the fifth series). A person sees it at once:
skies and facades more saturated than any photo. Measured in gan.images' 16 x 16 pixel
features, the space of `memorisation` and `diversity`.
"""

from __future__ import annotations

import math

import torch

from gan.images import FEATURE_SIDE, pixel_features
from gan.metrics.inputs import not_computed

PALETTE_KEYS = ("contrast", "chroma")
# Median ratios within [1/1.1, 1.1] of the val windows' count as real: train windows
# differ from val windows by at most 4% on the synthetic source (docs/EVALUATION.md).
PALETTE_BAND = 1.1


def palette_values(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """uint8 [N,3,R,R] -> per-image float [N] values in [0, 1] of the 16 x 16 image:
    "contrast", the standard deviation of its pixel values (all channels); "chroma", the
    mean over pixels of max minus min channel (0 for grey)."""
    pixels = pixel_features(images).view(-1, 3, FEATURE_SIDE**2)
    chroma = (pixels.amax(dim=1) - pixels.amin(dim=1)).mean(dim=1)
    return {"contrast": pixels.flatten(1).std(dim=1), "chroma": chroma}


def palette_stats(generated: torch.Tensor, val: torch.Tensor, train: torch.Tensor) -> dict:
    """Median contrast and chroma of generated images against val windows, beside train
    windows against the same val windows (how far real differs from real).

    All three uint8 [N,3,R,R]. Per key: the three medians, `ratio` (generated / val) and
    `train_ratio` (train / val); top-level `ratio` is the key's ratio furthest from 1 (in
    log terms), the headline value. Not computed when the val windows' median contrast
    or chroma is 0: there is nothing to compare against.
    """
    medians = [
        {key: float(value.median()) for key, value in palette_values(images).items()}
        for images in (generated, val, train)
    ]
    if min(medians[1].values()) <= 0:
        return not_computed("not computed: the val windows are flat grey (median 0)")
    result: dict = {"computed": True, "images": len(generated)}
    for key in PALETTE_KEYS:
        ours, real, other = (m[key] for m in medians)
        result[key] = {"generated": ours, "val": real, "train": other, "ratio": ours / real}
        result[key]["train_ratio"] = other / real
    ratios = [result[key]["ratio"] for key in PALETTE_KEYS]
    result["ratio"] = max(ratios, key=lambda r: abs(math.log(r)) if r > 0 else math.inf)
    return result
