"""Which device to train on, and what is fast on it.

- bf16 autocast on CUDA and Gaudi; never on the CPU (bf16 autocast there measured ~30x
  slower than fp32, DESIGN.md) nor on MPS.
- channels_last on CUDA and the CPU (measured faster on both); not on MPS or Gaudi.
- Fused Adam where the backend has one (CUDA, Gaudi); torch's default Adam elsewhere.

Habana support lives in gan/hpu.py, imported only inside the hpu branches here, so a
machine without `habana_frameworks` never touches it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from gan.errors import AcceleratorError

DEVICES = ("auto", "cpu", "cuda", "mps", "hpu")
DDP_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "hpu": "hccl", "mps": "gloo"}


@dataclass(frozen=True)
class Accelerator:
    """One process's device and the settings that are fast on it."""

    device: torch.device
    kind: str  # cpu | cuda | mps | hpu
    autocast_dtype: torch.dtype | None  # None: run in fp32
    channels_last: bool  # put models and batches in NHWC

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes and losses (a no-op context in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.kind, dtype=self.autocast_dtype)

    def mark_step(self) -> None:
        """Gaudi lazy mode: run the graph built so far. A no-op everywhere else."""
        if self.kind == "hpu":
            from gan import hpu

            hpu.mark_step()

    def optimizer(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float],
        capturable: bool = False,
    ) -> torch.optim.Optimizer:
        """Adam with the fastest implementation this device has; `capturable` keeps its
        step count on the device so a CUDA graph can replay the update."""
        if self.kind == "hpu":
            from gan import hpu

            return hpu.fused_adamw(params, lr, betas, 0.0)
        fused = True if self.kind == "cuda" else None  # None: torch picks (foreach on GPUs)
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused, capturable=capturable)

    def synchronize(self) -> None:
        """Wait for queued device work, so wall-clock timings are honest."""
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.kind == "mps":
            torch.mps.synchronize()
        elif self.kind == "hpu":
            from gan import hpu

            hpu.synchronize()

    def memory_bytes(self) -> int | None:
        """Device memory held by tensors, for logging (None on the CPU)."""
        if self.kind == "cuda":
            return torch.cuda.memory_allocated(self.device)
        if self.kind == "mps":
            return torch.mps.current_allocated_memory()
        if self.kind == "hpu":
            from gan import hpu

            return hpu.memory_allocated()
        return None


def available_kinds() -> list[str]:
    """Device kinds usable here, in `auto`'s order of preference (cpu always last)."""
    from gan import hpu

    kinds = []
    if torch.cuda.is_available():
        kinds.append("cuda")
    if hpu.is_available():
        kinds.append("hpu")
    if torch.backends.mps.is_available():
        kinds.append("mps")
    return [*kinds, "cpu"]


def check_device(name: str) -> str:
    """`name` itself if it is a `--device` value; no hardware is looked at."""
    if name not in DEVICES:
        raise AcceleratorError(f"unknown device {name!r}: choose auto, cpu, cuda, mps or hpu")
    return name


def resolve_accelerator(name: str = "auto", local_rank: int = 0) -> Accelerator:
    """The accelerator for `--device name`; auto prefers cuda, hpu, mps, then cpu.

    local_rank picks the CUDA device under torchrun; Gaudi gives each process its own
    card as "hpu", and MPS and the CPU have one device.
    """
    check_device(name)
    if name == "auto":
        name = available_kinds()[0]
    if name == "cuda":
        return _cuda(local_rank)
    if name == "hpu":
        from gan import hpu

        hpu.check_available()
        return Accelerator(torch.device("hpu"), "hpu", torch.bfloat16, channels_last=False)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise AcceleratorError(
                "--device mps: no Apple MPS device (torch.backends.mps.is_available() is "
                "False); use --device cpu or auto"
            )
        return Accelerator(torch.device("mps"), "mps", None, channels_last=False)
    return Accelerator(torch.device("cpu"), "cpu", None, channels_last=True)


def _cuda(local_rank: int) -> Accelerator:
    if not torch.cuda.is_available():
        raise AcceleratorError(
            "--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); "
            "use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if not 0 <= local_rank < count:
        raise AcceleratorError(
            f"--device cuda: local rank {local_rank} but {count} CUDA device(s) visible; "
            "start at most one process per GPU"
        )
    torch.cuda.set_device(local_rank)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    return Accelerator(torch.device("cuda", local_rank), "cuda", torch.bfloat16, True)


def ddp_backend(kind: str) -> str:
    """The torch.distributed backend for a device kind; registers HCCL first on Gaudi."""
    if kind not in DDP_BACKENDS:
        raise AcceleratorError(f"no DDP backend for device kind {kind!r}")
    if kind == "hpu":
        from gan import hpu

        hpu.init_hccl()
    return DDP_BACKENDS[kind]
