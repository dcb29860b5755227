"""Which device to train on, and what is fast on it.

bf16 autocast on CUDA and Gaudi (never on CPU: ~30x slower there, DESIGN.md);
channels_last on CUDA and CPU (measured faster on both); fused Adam where the backend
has one. Habana support lives in gan/hpu.py and is imported only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from gan import hpu

KINDS = ("auto", "cpu", "cuda", "mps", "hpu")
DDP_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "hpu": "hccl", "mps": "gloo"}


class AcceleratorError(ValueError):
    """The asked-for device is absent or unknown; the message says what to use."""


@dataclass(frozen=True)
class Accelerator:
    device: torch.device
    kind: str
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.kind, dtype=self.autocast_dtype)

    def mark_step(self) -> None:
        if self.kind == "hpu":
            hpu.mark_step()

    def optimizer(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float],
        weight_decay: float = 0.0,
    ) -> torch.optim.Optimizer:
        if self.kind == "hpu":
            return hpu.fused_adamw(params, lr, betas, weight_decay)
        fused = self.kind == "cuda"  # one kernel for every parameter's update
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)

    def synchronize(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.kind == "mps":
            torch.mps.synchronize()

    def memory_bytes(self) -> int | None:
        """Accelerator memory held by tensors (None on the CPU)."""
        if self.kind == "cuda":
            return torch.cuda.memory_allocated(self.device)
        if self.kind == "mps":
            return torch.mps.current_allocated_memory()
        return None


def available_kinds() -> list[str]:
    kinds = ["cpu"]
    if torch.cuda.is_available():
        kinds.append("cuda")
    if torch.backends.mps.is_available():
        kinds.append("mps")
    if hpu.is_available():
        kinds.append("hpu")
    return kinds


def resolve_accelerator(name: str = "auto", local_rank: int = 0) -> Accelerator:
    """The accelerator for `--device name`; `auto` prefers cuda, hpu, mps, then cpu."""
    if name not in KINDS:
        raise AcceleratorError(f"unknown device {name!r}: choose auto, cpu, cuda, mps or hpu")
    available = available_kinds()
    if name == "auto":
        name = next(k for k in ("cuda", "hpu", "mps", "cpu") if k in available)
    elif name not in available:
        raise AcceleratorError(_absent(name))
    if name == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.set_device(local_rank)
        return Accelerator(torch.device("cuda", local_rank), "cuda", torch.bfloat16, True)
    if name == "hpu":
        hpu.core()
        return Accelerator(torch.device("hpu", local_rank), "hpu", torch.bfloat16, False)
    if name == "mps":
        return Accelerator(torch.device("mps"), "mps", None, False)
    return Accelerator(torch.device("cpu"), "cpu", None, True)


def _absent(name: str) -> str:
    if name == "hpu":
        try:
            hpu.core()
        except hpu.HabanaMissing as exc:
            return str(exc)
        return "--device hpu: habana_frameworks sees no Gaudi card; use --device cpu or auto"
    reasons = {
        "cuda": "no CUDA device is visible (torch.cuda.is_available() is False)",
        "mps": "no Apple MPS device (torch.backends.mps.is_available() is False)",
    }
    return f"--device {name}: {reasons[name]}; use --device cpu or auto"


def ddp_backend(kind: str) -> str:
    """The torch.distributed backend for a device kind (HCCL is registered first)."""
    if kind == "hpu":
        hpu.init_hccl()
    return DDP_BACKENDS[kind]
