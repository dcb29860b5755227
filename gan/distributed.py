"""Data parallelism for a GAN, under torchrun (NCCL on CUDA, HCCL on Gaudi, gloo on CPU).

DDP's module wrapper assumes one forward per backward; a GAN step runs D on real and
on fake batches (separately, so BatchNorm sees each alone, as in the DCGAN recipe)
before one backward. So instead of wrapping, we keep replicas identical by hand:
broadcast the weights once, then average gradients over ranks in one flat bucket
before every optimizer step. Same maths as DDP, one collective per model per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The world torchrun describes in RANK/LOCAL_RANK/WORLD_SIZE (one process if unset)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init_process_group(world: World, backend: str) -> None:
    """Join the process group (a no-op for a single process)."""
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module) -> None:
    """Make every rank's parameters and buffers equal to rank 0's."""
    if not dist.is_initialized():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(module: nn.Module) -> None:
    """All-reduce (mean) the gradients of `module` in one flat bucket."""
    if not dist.is_initialized():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


def all_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor of metrics over ranks (for logging)."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()
