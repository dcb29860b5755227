"""Batches of uint8 images: windows of stored strips, grids, pixel features, nearest rows.

The small rules that renders, metrics and the report share, written once:
- a shard stores a 2:1 strip per photo; a picture of it is the centre R x R window
  (`shards.geometry.centre_window`), and what G learns from is a random window anywhere
  along it, maybe mirrored (`gan.augment.random_window`, the training draw);
- images are compared in one fixed, cheap feature space: 16 x 16 area-downsampled RGB
  in [0, 1] (768 numbers), Euclidean distance; model-free and blind to small shifts;
- a grid is `torchvision.utils.make_grid`, `nrow` images per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from gan.augment import random_window, to_uint8

PADDING = 2  # pixels between grid cells
FEATURE_SIDE = 16  # the comparison feature space: 16 x 16 x 3 pixels


def strip_windows(strips: torch.Tensor) -> torch.Tensor:
    """The windows G may have learned from a strip: left, centre, right, each also mirrored.

    uint8 [S,3,R,W] -> [S,6,3,R,R]: a fixed, finite stand-in for training's random shifts
    and flips, for nearest-neighbour searches (memorisation).
    """
    side, width = strips.shape[-2], strips.shape[-1]
    lefts = (0, (width - side) // 2, width - side)
    views = [strips[..., x : x + side] for x in lefts]
    views += [v.flip(-1) for v in views]
    return torch.stack(views, dim=1)


def training_windows(strips: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """uint8 [n,3,R,R]: n windows drawn as training draws them, every strip equally often.

    Strips are taken in shuffled passes over the whole set (each strip n // S or one more
    times; a random n of them when S > n), then each gets a random window and a coin-flip
    mirror (`random_window`). A fixed `n` whatever the number of strips keeps the
    metrics' sampling noise independent of the dataset's size; balanced passes keep a
    small split's make-up (night frames, cities) the same in every draw, where picking
    with replacement let it wander. Seeded on the CPU.
    """
    if len(strips) == 0:
        raise ValueError("no strips to draw windows from")
    generator = torch.Generator().manual_seed(seed)
    passes = -(-n // len(strips))
    picked = torch.cat([torch.randperm(len(strips), generator=generator) for _ in range(passes)])
    picked = picked[:n]
    parts = [to_uint8(random_window(strips[chunk], generator)) for chunk in picked.split(1024)]
    return torch.cat(parts)


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = PADDING) -> Image.Image:
    """uint8 [N,3,H,W] -> one RGB image, `nrow` per row.

    Size: (nrow*(W+p)+p) x (rows*(H+p)+p) with rows = ceil(N/nrow), p = padding.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"need uint8 [N,3,H,W] images, got {images.dtype} {list(images.shape)}")
    from torchvision.utils import make_grid  # on first use, as in shards/decode.py

    grid = make_grid(images.cpu(), nrow=max(1, min(nrow, len(images))), padding=padding)
    return Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy(), "RGB")


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float [N, 768] on the CPU: 16 x 16 area-downsampled pixels in [0, 1]."""
    parts = [
        F.adaptive_avg_pool2d(chunk.cpu().float().div(255.0), FEATURE_SIDE).flatten(1)
        for chunk in images.split(1024)
    ]
    return torch.cat(parts) if parts else torch.empty(0, 3 * FEATURE_SIDE**2)


def nearest(query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 [Nq] index of the nearest reference row, float [Nq] its L2 distance).

    Chunked (512 queries x 8192 references at a time), so memory stays ~16 MB however
    large the sets.
    """
    if len(reference) == 0:
        raise ValueError("no reference images to compare with")
    indices, distances = [], []
    for chunk in query.split(512):
        best = torch.full((len(chunk),), float("inf"))
        index = torch.zeros(len(chunk), dtype=torch.int64)
        for start in range(0, len(reference), 8192):
            distance, where = torch.cdist(chunk, reference[start : start + 8192]).min(1)
            better = distance < best
            best = torch.where(better, distance, best)
            index = torch.where(better, where + start, index)
        indices.append(index)
        distances.append(best)
    if not indices:
        return torch.empty(0, dtype=torch.int64), torch.empty(0)
    return torch.cat(indices), torch.cat(distances)
