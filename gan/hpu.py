"""Everything Habana Gaudi, isolated: imported only when `--device hpu` is asked for.

`habana_frameworks.torch` (Habana's PyTorch bridge) is not on PyPI; it comes with the
Intel Gaudi software stack (its docker images or installer). This module has never
run on Gaudi hardware here (there is none): its tests inject a fake
`habana_frameworks` package and check the calls we make - lazy-mode `mark_step()`
after backward and after the optimizer step, Habana's FusedAdamW, and HCCL for
several cards - as documented by Habana.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from types import ModuleType

import torch

INSTALL_HINT = (
    "--device hpu: habana_frameworks.torch is not installed; it is not on PyPI: install "
    "Habana's PyTorch bridge from the Intel Gaudi software stack (docker image or "
    "installer), see https://docs.habana.ai"
)


class HabanaMissing(ValueError):
    """The Habana bridge is not importable (a user-fixable setup problem)."""


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise HabanaMissing(INSTALL_HINT) from None


def core() -> ModuleType:
    """`habana_frameworks.torch.core` (importing it registers the "hpu" device)."""
    return _import("habana_frameworks.torch.core")


def is_available() -> bool:
    try:
        return bool(_import("habana_frameworks.torch.hpu").is_available())
    except HabanaMissing:
        return False


def is_lazy() -> bool:
    """Lazy mode (graphs built until `mark_step`) is Habana's default: PT_HPU_LAZY_MODE=1."""
    return os.environ.get("PT_HPU_LAZY_MODE", "1") == "1"


def mark_step() -> None:
    """Flush the lazily built graph to the device (a no-op outside lazy mode)."""
    if is_lazy():
        core().mark_step()


def fused_adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Habana's FusedAdamW: one kernel for all parameters' updates."""
    optimizers = _import("habana_frameworks.torch.hpex.optimizers")
    return optimizers.FusedAdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def init_hccl() -> None:
    """Register the HCCL backend with torch.distributed (needed before init_process_group)."""
    _import("habana_frameworks.torch.distributed.hccl")
