"""Memorisation and mode collapse, in gan.images' 16 x 16 pixel feature space.

Memorisation: are samples closer to their nearest training image than fresh real (val)
images are? Collapse: are samples as spread out as real images? Both compare against
training-style windows, the images G learns from. Model-free, cheap, blind to small
shifts (the render step's nearest-neighbour grid is the visual check).
"""

from __future__ import annotations

import torch

from gan.images import FEATURE_SIDE, nearest, pixel_features, strip_windows

FEATURE_SPACE = f"{FEATURE_SIDE}x{FEATURE_SIDE} RGB pixels, L2"
DIVERSITY_MAX_IMAGES = 1024


def memorisation_stats(generated: torch.Tensor, val: torch.Tensor, train: torch.Tensor) -> dict:
    """Nearest-train distances of generated samples against those of val images.

    generated, val: uint8 [*,3,R,R]; train: uint8 [S,3,R,W] strips, searched as six
    windows each (`strip_windows`), a chunk of strips at a time so the windows of
    10,000 strips (~740 MB at 64 px) never exist at once.
    """
    reference = torch.cat(
        [pixel_features(strip_windows(chunk).flatten(0, 1)) for chunk in train.split(512)]
    )
    d_gen = nearest(pixel_features(generated), reference)[1]
    d_val = nearest(pixel_features(val), reference)[1]
    threshold = float(torch.quantile(d_val, 0.01))
    median_val = float(d_val.median())
    return {
        "computed": True,
        "feature_space": FEATURE_SPACE,
        "median_generated": float(d_gen.median()),
        "median_val": median_val,
        "ratio": float(d_gen.median()) / median_val if median_val > 0 else None,
        "val_p1": threshold,
        "fraction_below_val_p1": float((d_gen < threshold).float().mean()),
        "generated_images": len(generated),
        "val_images": len(val),
        "train_images": len(reference),
    }


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of uint8 [N,3,R,R] images (N >= 2), in pixel features."""
    return float(torch.pdist(pixel_features(images).double()).mean())


def diversity_stats(generated: torch.Tensor, val: torch.Tensor) -> dict:
    """Mean pairwise distance among samples against the same among as many val images."""
    n = min(len(generated), len(val), DIVERSITY_MAX_IMAGES)
    ours, real = mean_pairwise_distance(generated[:n]), mean_pairwise_distance(val[:n])
    return {
        "computed": True,
        "feature_space": FEATURE_SPACE,
        "images": n,
        "generated": ours,
        "val": real,
        "ratio": ours / real if real > 0 else None,
    }
