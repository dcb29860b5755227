"""Exponential moving average of the generator, for sampling and evaluation.

Averaged weights give visibly smoother, more stable samples than the last step's G
(Karras et al.; Yazici et al., "The Unusual Effectiveness of Averaging in GAN Training").
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


class EMA:
    """Holds `model`, an averaged copy of the generator, in eval mode and without grads.

    Parameters follow `p_ema <- b * p_ema + (1 - b) * p` with b = min(beta, (1 + step) /
    (10 + step)) at generator step `step` (TensorFlow's num_updates warm-up): a fixed
    0.999 would leave 82% of the random initial weights in the average after 200 steps,
    so a short run's samples would be mostly noise. Buffers (BatchNorm running
    statistics) are copied, not averaged, and `recompute_batchnorm` replaces them with
    statistics of the averaged weights themselves before the model is sampled or saved.
    Sample with `ema.model(z)`.
    """

    def __init__(self, model: nn.Module, beta: float = 0.999) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"EMA beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | torch.Tensor) -> None:
        """Move the average towards `model` (same architecture and device) with weight
        `decay` on the average: `decay(step)` after G step `step` (0 for the first), the
        trainer's checkpointed counter, so a resumed run continues the same schedule. A
        0-d device tensor may hold it (a CUDA graph reads it at each replay)."""
        averaged = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        if isinstance(decay, torch.Tensor):  # tensor ops only: a float() would sync the host
            torch._foreach_mul_(averaged, decay)
            torch._foreach_add_(averaged, torch._foreach_mul(current, 1.0 - decay))
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)  # one fused op for all
        for own, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            own.copy_(theirs)

    @torch.no_grad()
    def recompute_batchnorm(self, batches: Iterable[tuple[torch.Tensor, ...]]) -> None:
        """BatchNorm running statistics of the averaged weights: reset, then a cumulative
        average (momentum None) over the batch statistics of `batches` (each G's inputs:
        (z float [B, nz],) or, conditional, (z, labels int64 [B])) in train mode. G's own
        running statistics were gathered with G's weights along the way, so they
        misdescribe the average's activations."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        self.model.train()
        for inputs in batches:
            self.model(*inputs)
        self.model.eval()
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum

    def decay(self, step: int) -> float:
        """The averaging weight at `step`: warms up from 0.1 to `beta`."""
        return min(self.beta, (1.0 + step) / (10.0 + step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
