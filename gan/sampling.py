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
from shards.conditions import NIGHT, class_cities, class_index, with_night


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


def city_index(config: ModelConfig, city: str, night: bool = False) -> int:
    """The label of `city` (by night if `night`) in a conditional checkpoint's vocabulary.

    ValueError, one line: for an unconditional model, a name listing the known cities,
    or a night asked of a model not conditioned on it.
    """
    if not config.n_classes:
        raise ValueError(
            f"this checkpoint's generator is unconditional, so it cannot draw {city!r}; "
            "train with --conditional city (or city,night) to sample by city"
        )
    return class_index(config.classes, city, night, config.untrained)


def city_labels(
    config: ModelConfig, n: int, city: str = "", night: bool = False
) -> torch.Tensor | None:
    """G's labels for n samples: int64 [n] on the CPU, all `city` (by night if `night`)
    or, with no city, every class in turn (every city at night, with `night`); None when
    G is unconditional and neither is asked for."""
    if city:
        return torch.full((n,), city_index(config, city, night), dtype=torch.int64)
    if night:
        if not config.n_classes:
            raise ValueError(
                "this checkpoint's generator is unconditional, so it cannot draw night "
                "frames; train with --conditional city,night"
            )
        cities = class_cities(config.classes)
        learned = [c for c in cities if c + NIGHT not in config.untrained] or cities[:1]
        night_of = torch.tensor([city_index(config, c, True) for c in learned])
        return night_of[torch.arange(n) % len(night_of)]
    return torch.arange(n) % config.n_classes if config.n_classes else None


def evaluation_labels(
    config: ModelConfig, n: int, night_share: torch.Tensor | None = None
) -> torch.Tensor | None:
    """G's labels for n evaluation samples: every city in turn; under "city,night", city
    c's k-th sample is a night one for round(n_c * night_share[c]) of its n_c samples,
    spread evenly (night_share float [cities]: the val split's), so its samples mix day
    and night as c's real images do. None for an unconditional G."""
    if not config.n_classes:
        return None
    cities = len(class_cities(config.classes))
    city = torch.arange(n) % cities
    if not with_night(config.conditional):
        return city
    share = night_share if night_share is not None else torch.zeros(cities)
    k = (torch.arange(n) // cities).double()
    night = torch.floor((k + 1) * share[city]) > torch.floor(k * share[city])
    return 2 * city + night.long()


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
