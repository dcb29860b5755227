"""Random streams that survive a move between device types.

A generator's saved state is the layout of its device's algorithm: 5,056 bytes of
Mersenne Twister on CPU, 16 bytes of Philox (seed, offset) on CUDA, other sizes on MPS
and HPU. A run checkpointed on one and resumed on another cannot carry the stream
over; it re-seeds deterministically from the saved bytes instead, so resuming the same
checkpoint on the same kind of device always gives the same run.
"""

from __future__ import annotations

import hashlib

import torch


def set_state(generator: torch.Generator, state: torch.Tensor) -> bool:
    """Put `generator` at `state`; False where it had to be re-seeded from it instead."""
    try:
        generator.set_state(state.cpu())
        return True
    except (RuntimeError, ValueError, TypeError):  # a layout not this backend's: CPU says
        # "Expected a CPUGeneratorImplState of size 5056 but found 16"
        digest = hashlib.sha256(state.cpu().numpy().tobytes()).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return False
