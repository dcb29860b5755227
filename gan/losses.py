"""GAN objectives: non-saturating BCE (the DCGAN default), hinge, and WGAN-GP.

Every loss takes D's logits (float [B]) and never applies a Sigmoid itself, so all are
safe under autocast; the trainer casts logits to fp32 before calling them. Add an
objective by adding a class with `name`, `needs_gp`, `d_loss` and `g_loss` to LOSSES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn


class GanLoss(Protocol):
    """D's and G's losses for one objective (each a scalar tensor to minimise)."""

    name: ClassVar[str]
    needs_gp: ClassVar[bool]  # the trainer adds gradient_penalty() to D's loss
    # The real-minus-fake logit gap at which D has all but won (0: no such scale).
    saturated_gap: ClassVar[float]

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor: ...

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class BceLoss:
    """Non-saturating GAN loss (Goodfellow et al.): G maximises log D(G(z)).

    One-sided label smoothing (Salimans et al.): the real target is 1 - s, the fake
    target stays 0, so D is discouraged from overconfidence without rewarding fakes.
    """

    label_smoothing: float = 0.0
    name: ClassVar[str] = "bce"
    needs_gp: ClassVar[bool] = False
    saturated_gap: ClassVar[float] = 5.0  # sigmoid 0.92 on real, 0.08 on fake

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real_target = torch.full_like(real_logits, 1.0 - self.label_smoothing)
        err_real = F.binary_cross_entropy_with_logits(real_logits, real_target)
        err_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return err_real + err_fake

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@dataclass(frozen=True)
class HingeLoss:
    """Hinge loss (Lim & Ye; SAGAN): D pushes real logits above 1 and fake ones below -1."""

    name: ClassVar[str] = "hinge"
    needs_gp: ClassVar[bool] = False
    saturated_gap: ClassVar[float] = 3.0  # both sides well past their margins of 1

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


@dataclass(frozen=True)
class WassersteinLoss:
    """WGAN critic loss (Arjovsky et al.); Lipschitz-ness comes from gradient_penalty()."""

    name: ClassVar[str] = "wgan-gp"
    needs_gp: ClassVar[bool] = True
    saturated_gap: ClassVar[float] = 0.0  # critic values have no fixed scale

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return fake_logits.mean() - real_logits.mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


LOSSES: dict[str, type[GanLoss]] = {cls.name: cls for cls in (BceLoss, HingeLoss, WassersteinLoss)}


def make_loss(name: str, label_smoothing: float = 0.0) -> GanLoss:
    """The objective called `name`; label smoothing exists for bce only."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    if name == BceLoss.name:
        return BceLoss(label_smoothing)
    if label_smoothing:
        raise ValueError(f"label_smoothing applies to the bce loss only, got it with {name!r}")
    return LOSSES[name]()


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0
) -> torch.Tensor:
    """weight * E[(||grad_x D(x_hat)||_2 - 1)^2] at random mixes x_hat (Gulrajani et al.).

    real, fake: images [B, 3, R, R] (fake detached). One mixing weight per sample. Runs
    in fp32 with autocast off: squared gradient norms underflow and lose precision in
    bf16. create_graph=True so the penalty's own gradient reaches D's weights. The
    penalty is per sample, so D must not use BatchNorm (ModelConfig.d_norm="layer").
    """
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = torch.lerp(fake.detach().float(), real.detach().float(), eps).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = critic(mixed).float()
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return weight * (grad.flatten(1).norm(dim=1) - 1.0).square().mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma / 2 * E[||grad_x D(x)||^2] on real images (Mescheder et al. 2018, "Which
    Training Methods for GANs do actually Converge?").

    real: D's input float [B, 3, R, R], made with requires_grad before D saw it;
    real_logits: D's logits on it, float [B]. create_graph=True so the penalty's gradient
    reaches D's weights. Called every k-th D step with gamma * k (StyleGAN2's lazy R1).
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return 0.5 * gamma * grad.float().flatten(1).square().sum(dim=1).mean()
