"""Everything Habana Gaudi, isolated: imported only when `--device hpu` is asked for.

NEVER RUN ON GAUDI HARDWARE HERE: no Gaudi card (and no Habana software) was available
while this was written. It follows Habana's documentation, and its tests only check,
against a fake `habana_frameworks` package, that we make the documented calls:
`htcore.mark_step()` in lazy mode only, Habana's FusedAdamW, bf16 autocast, HCCL
registration, and the error text where the bridge is missing. Expect to fix things on
the first real run.

`habana_frameworks.torch` (Habana's PyTorch bridge) is not on PyPI; it ships with the
Intel Gaudi software stack (its docker images or installer). Each function imports it
on demand so the rest of `gan/` never needs it.

Execution mode: PT_HPU_LAZY_MODE=1 is lazy mode (ops queue into a graph that
`mark_step()` compiles and runs), 0 is eager mode (+ torch.compile). The default
changed: older stacks (SynapseAI 1.x docs) default to 1, current Intel Gaudi docs to 0.
We trust the variable when it is set and otherwise ask the bridge
(`habana_frameworks.torch.utils.internal.is_lazy()`), assuming lazy if it cannot say.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from types import ModuleType

import torch

from gan.errors import AcceleratorError

INSTALL_HINT = (
    "--device hpu: habana_frameworks.torch is not installed; it is not on PyPI: install "
    "Habana's PyTorch bridge from the Intel Gaudi software stack (docker image or "
    "installer), see https://docs.habana.ai"
)
NO_DEVICE = (
    "--device hpu: habana_frameworks.torch is installed but sees no Gaudi device "
    "(habana_frameworks.torch.hpu.is_available() is False); use --device cpu or auto"
)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise AcceleratorError(INSTALL_HINT) from None


def core() -> ModuleType:
    """`habana_frameworks.torch.core`: importing it registers the "hpu" device with torch."""
    return _import("habana_frameworks.torch.core")


def _hpu_api() -> ModuleType:
    """`habana_frameworks.torch.hpu`: the torch.cuda-like API (is_available, synchronize...)."""
    return _import("habana_frameworks.torch.hpu")


def is_available() -> bool:
    """True when the bridge imports and sees a card; never raises (used by --device auto)."""
    try:
        return bool(_hpu_api().is_available())
    except Exception:  # a half-installed bridge (missing driver libs) must not break auto
        return False


def check_available() -> None:
    """Load the bridge and demand a card, or raise AcceleratorError saying what is wrong."""
    core()
    if not _hpu_api().is_available():
        raise AcceleratorError(NO_DEVICE)


def is_lazy() -> bool:
    """Whether the bridge runs in lazy mode (see the module docstring for the default)."""
    value = os.environ.get("PT_HPU_LAZY_MODE")
    if value is not None:
        return value.strip() == "1"
    try:
        from habana_frameworks.torch.utils.internal import is_lazy as bridge_is_lazy
    except ImportError:
        return True
    return bool(bridge_is_lazy())


def mark_step() -> None:
    """Compile and run the ops queued so far (lazy mode); a no-op in eager mode."""
    if is_lazy():
        core().mark_step()


def fused_adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Habana's FusedAdamW (one kernel for every parameter's update).

    With weight_decay=0 (the DCGAN default) AdamW is Adam; eps is set to torch's Adam
    default 1e-8 (FusedAdamW's own default is 1e-6). Some stacks refuse to import
    `hpex.optimizers` in eager mode: there we fall back to torch's AdamW.
    """
    try:
        from habana_frameworks.torch.hpex.optimizers import FusedAdamW
    except ImportError:
        if is_lazy():
            raise AcceleratorError(INSTALL_HINT) from None
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return FusedAdamW(params, lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay)


def synchronize() -> None:
    """Wait for the card to finish queued work (for honest timings)."""
    _hpu_api().synchronize()


def memory_allocated() -> int:
    """Bytes of device memory held by tensors on this process's card."""
    return int(_hpu_api().memory_allocated())


def init_hccl() -> None:
    """Register the "hccl" backend with torch.distributed (before init_process_group)."""
    _import("habana_frameworks.torch.distributed.hccl")
