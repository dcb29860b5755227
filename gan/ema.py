"""Exponential moving average of the generator, for sampling and evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `model`'s averaged copy (in eval mode); buffers are copied, not averaged."""

    def __init__(self, model: nn.Module, beta: float = 0.999) -> None:
        self.beta = beta
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        mine = list(self.model.parameters())
        torch._foreach_lerp_(mine, [p.detach() for p in model.parameters()], 1.0 - self.beta)
        for own, current in zip(self.model.buffers(), model.buffers()):
            own.copy_(current)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
