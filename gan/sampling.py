"""Models out of a checkpoint, and images out of a generator (for renders and evaluation).

Sampling always uses the EMA generator (the averaged weights: smoother, more stable
samples) in eval mode, so BatchNorm uses its running statistics and a sample does not
depend on what else is in its batch. Latents are drawn on the CPU from a seeded
generator, so the same seed gives the same images on every device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gan.augment import to_uint8
from gan.checkpoint import CheckpointError, load_checkpoint
from gan.models import Discriminator, Generator, ModelConfig


def model_config(state: dict[str, Any], path: Path | str = "checkpoint") -> ModelConfig:
    """The ModelConfig a checkpoint was trained with (its "job"'s "model" section)."""
    try:
        return ModelConfig(**state["job"]["model"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: the checkpoint lacks its model config ({exc}); use one written by msls train"
        ) from None


def generator_from_state(
    state: dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[Generator, ModelConfig]:
    """The EMA generator of a loaded checkpoint (G itself if it has no EMA), eval mode."""
    config = model_config(state)
    generator = Generator(config)
    generator.load_state_dict(state.get("ema") or state["G"])
    return generator.to(device).eval().requires_grad_(False), config


def discriminator_from_state(
    state: dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[Discriminator, ModelConfig]:
    """The discriminator of a loaded checkpoint, in eval mode (BatchNorm running stats)."""
    config = model_config(state)
    discriminator = Discriminator(config)
    discriminator.load_state_dict(state["D"])
    return discriminator.to(device).eval().requires_grad_(False), config


def load_generator(
    checkpoint_path: Path | str, device: str | torch.device = "cpu"
) -> tuple[Generator, ModelConfig, dict[str, Any]]:
    """(EMA generator in eval mode on `device`, its ModelConfig, the checkpoint state)."""
    state = load_checkpoint(Path(checkpoint_path))
    generator, config = generator_from_state(state, device)
    return generator, config, state


def load_discriminator(
    checkpoint_path: Path | str, device: str | torch.device = "cpu"
) -> tuple[Discriminator, ModelConfig, dict[str, Any]]:
    """(discriminator in eval mode on `device`, its ModelConfig, the checkpoint state)."""
    state = load_checkpoint(Path(checkpoint_path))
    discriminator, config = discriminator_from_state(state, device)
    return discriminator, config, state


def latents(n: int, nz: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """float [n, nz] ~ N(0, 1) on the CPU; with `truncation` t, every |z| > t is redrawn.

    Redrawing (not clamping) gives the truncated normal of BigGAN's truncation trick.
    """
    if truncation is not None and truncation <= 0:
        raise ValueError(f"truncation must be > 0, got {truncation}")
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, nz, generator=generator)
    if truncation is not None:
        outside = z.abs() > truncation
        while outside.any():
            z[outside] = torch.randn(int(outside.sum()), generator=generator)
            outside = z.abs() > truncation
    return z


def city_index(config: ModelConfig, city: str) -> int:
    """The label of `city` in a conditional checkpoint's vocabulary (its dataset's cities).

    ValueError, one line: for an unconditional model, or a name listing the known ones.
    """
    if not config.n_classes:
        raise ValueError(
            f"this checkpoint's generator is unconditional, so it cannot draw {city!r}; "
            "train with --conditional city to sample by city"
        )
    if city not in config.classes:
        known = ", ".join(config.classes)
        raise ValueError(f"unknown city {city!r}; this checkpoint knows: {known}")
    return config.classes.index(city)


def city_labels(config: ModelConfig, n: int, city: str = "") -> torch.Tensor | None:
    """G's labels for n samples: int64 [n] on the CPU, all `city` or, with no city, every
    city in turn; None when G is unconditional and no city is asked for."""
    if city:
        return torch.full((n,), city_index(config, city), dtype=torch.int64)
    return torch.arange(n) % config.n_classes if config.n_classes else None


@torch.no_grad()
def generate(
    G: Generator,
    n: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch: int = 256,
    truncation: float | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """n images from G: uint8 [n, 3, R, R] on the CPU. The same seed gives the same images.

    A conditional G draws image i for class labels[i] (int64 [n]); without labels, every
    class in turn (0, 1, .., K-1, 0, ..).
    """
    if n < 0 or batch < 1:
        raise ValueError(f"need n >= 0 and batch >= 1, got n={n}, batch={batch}")
    z = latents(n, G.nz, seed, truncation)
    if classes_of(G) and labels is None:
        labels = torch.arange(n) % classes_of(G)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} samples")
    images = []
    for start in range(0, n, batch) if n else [0]:
        y = None if labels is None else labels[start : start + batch]
        images.append(to_uint8(draw(G, z[start : start + batch], y, device)).cpu())
    return torch.cat(images)


def classes_of(G: torch.nn.Module) -> int:
    """Classes a generator is conditioned on; 0 for ours unconditional and for stand-ins
    without the attribute (pytorch/examples' netG in the benchmarks, test doubles)."""
    return getattr(G, "classes", 0)


def draw(
    G: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None, device: torch.device | str
) -> torch.Tensor:
    """G's float images of latents `z` (and `labels`, if any) moved to `device`."""
    return G(z.to(device)) if labels is None else G(z.to(device), labels.to(device))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents a and b ([..., nz]) at t in [0, 1].

    Walks the great circle between them, so intermediate latents keep the norm a
    Gaussian latent typically has (linear interpolation passes near the origin, where
    G has never been trained). Falls back to linear interpolation for parallel vectors.
    `t` may be a tensor broadcasting against a[..., :1] (e.g. [k, 1] for k steps).
    """
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    a_unit = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b_unit = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = (a_unit * b_unit).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * omega) / safe)
    wb = torch.where(parallel, t, torch.sin(t * omega) / safe)
    return wa * a + wb * b


def interpolation_steps(k: int) -> torch.Tensor:
    """float [k, 1]: k evenly spaced t in [0, 1], for `slerp(a, b, interpolation_steps(k))`."""
    return torch.linspace(0.0, 1.0, k).unsqueeze(1) if k > 1 else torch.zeros(max(k, 0), 1)
