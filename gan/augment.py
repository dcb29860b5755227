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


# DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
# Training"): the same random, differentiable transforms on real and fake images before
# every D call, so D cannot memorise a small training set and G still gets gradients.
DIFF_AUGMENTS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125  # shift up to 1/8 of the side, as in the paper's code
CUTOUT_RATIO = 0.5  # a square of half the side


def parse_policy(policy: str) -> tuple[str, ...]:
    """ "color,translation,cutout" -> its names, in order; ValueError names a bad one."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    for name in names:
        if name not in DIFF_AUGMENTS:
            raise ValueError(
                f"diffaugment: unknown transform {name!r}; use a comma-separated subset of "
                f"{','.join(DIFF_AUGMENTS)} (or '' for none)"
            )
    return names


def diff_augment(
    images: torch.Tensor, policy: tuple[str, ...], p: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """float [B, 3, H, W] -> the same shape, each transform of `policy` applied per sample
    with probability `p` (a 0-d tensor on the images' device: 1 is plain DiffAugment, ADA
    moves it). Differentiable in `images`; all randomness from `generator` (same device)."""
    for name in policy:
        augmented = _TRANSFORMS[name](images, generator)
        chosen = torch.rand(images.shape[0], device=images.device, generator=generator) < p
        images = torch.where(chosen[:, None, None, None], augmented, images)
    return images


def _color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per sample."""
    r = torch.rand(x.shape[0], 3, 1, 1, device=x.device, generator=generator)
    x = x + (r[:, 0:1] - 0.5)
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * (r[:, 1:2] * 2) + gray
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r[:, 2:3] + 0.5) + mean


def _translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each sample by up to 1/8 of its side in x and y, filling with zeros.

    One gather from the zero-padded image: measured on 2 CPU cores at batch 16, a
    cpu-preset step takes 0.95x the time it took with the same shift written as
    advanced indexing (benchmarks/step.py's "index-translation" arm)."""
    batch, channels, h, w = x.shape
    rows, cols = shifted_positions(x, generator)
    source = (rows[:, :, None] * (w + 2) + cols[:, None, :]).flatten(1)  # [B, H * W]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1)).flatten(2)  # [B, C, (H + 2) * (W + 2)]
    moved = padded.gather(2, source[:, None, :].expand(batch, channels, h * w))
    return moved.view(batch, channels, h, w)


def shifted_positions(
    x: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, C, H, W] -> int64 rows [B, H] and columns [B, W] of x padded by one pixel
    that each sample's shifted output reads: a random shift of up to 1/8 of the side per
    sample and axis, clamped onto the zero padding where it leaves the image."""
    batch, _, h, w = x.shape
    reach = max(1, round(h * TRANSLATION_RATIO))
    shift = torch.randint(-reach, reach + 1, (2, batch, 1), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device) + shift[0] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device) + shift[1] + 1).clamp(0, w + 1)
    return rows, cols


def _cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero a square of half the side at a random centre (it may hang over the edge)."""
    batch, _, h, w = x.shape
    size = round(h * CUTOUT_RATIO)
    start = torch.randint(0, h, (2, batch, 1), device=x.device, generator=generator) - size // 2
    rows = torch.arange(h, device=x.device) - start[0]  # [B, H]: position inside the square
    cols = torch.arange(w, device=x.device) - start[1]
    rows, cols = (rows >= 0) & (rows < size), (cols >= 0) & (cols < size)
    keep = ~(rows[:, :, None] & cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


class AdaptiveStrength:
    """ADA's augmentation probability p (Karras et al. 2020, "Training Generative
    Adversarial Networks with Limited Data"): the overfitting signal r_t = E[sign(D(real))]
    above `target` raises p, below lowers it, at a rate that moves p from 0 to 1 in
    `kimg` thousand real images. `target` 0 keeps p at 1 (plain DiffAugment); with no
    augmentation at all (`augmenting` False) p is 0, as the run's metrics report it.

    p stays a 0-d tensor on the device and is updated every step from that step's real
    logits (no host sync); it is part of the checkpoint, so a resume is exact.
    """

    def __init__(
        self, target: float, kimg: float, device: torch.device, augmenting: bool = True
    ) -> None:
        self.target, self.kimg = target, kimg
        self.p = torch.tensor(1.0 if augmenting and not target else 0.0, device=device)

    def update(self, r_t: torch.Tensor, images: int) -> None:
        """r_t: 0-d tensor, the mean sign of D's logits on the `images` real images of this
        step (averaged over ranks by the caller, so every rank keeps the same p)."""
        if self.target:
            step = torch.sign(r_t - self.target) * images / (self.kimg * 1000)
            self.p.add_(step).clamp_(0.0, 1.0)  # in place: a captured graph reads this tensor
