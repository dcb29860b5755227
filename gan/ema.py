"""Exponential moving average of the generator, for sampling and evaluation.

Averaged weights give visibly smoother, more stable samples than the last step's G
(Karras et al.; Yazici et al., "The Unusual Effectiveness of Averaging in GAN Training").
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `model`, an averaged copy of the generator, in eval mode and without grads.

    Parameters follow `p_ema <- beta * p_ema + (1 - beta) * p`. Buffers (BatchNorm
    running statistics) are copied, not averaged: they must match the weights they
    are used with. Sample with `ema.model(z)`.
    """

    def __init__(self, model: nn.Module, beta: float = 0.999) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"EMA beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards `model` (same architecture and device)."""
        averaged = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - self.beta)  # one fused op for all
        for own, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            own.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
