"""GAN objectives: non-saturating BCE (default), hinge, WGAN with gradient penalty.

Each takes D's logits (float [B]); none applies a Sigmoid first, so all are safe
under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GanLoss:
    """D's and G's losses for one objective."""

    name: str
    label_smoothing: float = 0.0  # one-sided: the real target is 1 - s (bce only)

    @property
    def needs_gp(self) -> bool:
        return self.name == "wgan-gp"

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.name == "bce":
            real_target = torch.full_like(real, 1.0 - self.label_smoothing)
            return F.binary_cross_entropy_with_logits(
                real, real_target
            ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        if self.name == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return fake.mean() - real.mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        if self.name == "bce":  # non-saturating: maximise log D(G(z))
            return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        return -fake.mean()


LOSSES = ("bce", "hinge", "wgan-gp")


def make_loss(name: str, label_smoothing: float = 0.0) -> GanLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    return GanLoss(name, label_smoothing)


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0
) -> torch.Tensor:
    """weight * E[(||grad D(x_hat)||_2 - 1)^2] on random mixes (Gulrajani et al.), fp32."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = critic(mixed).float()
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
