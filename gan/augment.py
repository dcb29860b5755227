"""Train-time augmentation on the accelerator: random window of the stored strip, flip.

The shards store a 2:1 strip per photo (decoded once, at shard time); taking a random
square window of it is the original project's random horizontal translation, done here
as one gather on the device instead of a PIL affine transform per image on the CPU.
"""

from __future__ import annotations

import torch


def random_window(
    strips: torch.Tensor, generator: torch.Generator, flip: bool = True
) -> torch.Tensor:
    """uint8 [B, 3, R, W] strips -> float [B, 3, R, R] in [-1, 1], randomly shifted (and flipped).

    `generator` lives on the strips' device, so no host round trip happens per batch.
    """
    batch, _, side, width = strips.shape
    offsets = torch.randint(
        0, width - side + 1, (batch,), device=strips.device, generator=generator
    )
    columns = offsets[:, None] + torch.arange(side, device=strips.device)
    if flip:
        mirrored = torch.rand(batch, device=strips.device, generator=generator) < 0.5
        columns = torch.where(mirrored[:, None], columns.flip(1), columns)
    index = columns[:, None, None, :].expand(batch, 3, side, side)
    window = strips.gather(3, index)
    return window.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, 3, H, W] (for grids and metrics)."""
    return images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
