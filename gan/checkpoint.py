"""Complete, atomic checkpoints, loaded with `weights_only=True`.

Complete means resume continues exactly: both models, both optimizers, the EMA
generator, the step, every random generator's state and the data position, plus the
configs that built them (re-applied on load, as lightweight-gan does) and the code
version. Atomic means a kill mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from shards.atomic import atomic_path

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) atomically to `path`."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    return path


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint safely: only tensors and plain containers are ever unpickled.

    A file holding arbitrary pickled objects (code that would run on load) is refused.
    `mmap=True` maps the tensors instead of reading them: cheap when only the record
    (step, configs, dataset) is wanted.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint; pass a checkpoint.pt from data/runs/<run>/"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors ({first}); "
            "only load checkpoints written by msls"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({exc}); use an earlier one"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an msls checkpoint (format {CHECKPOINT_FORMAT})")
    return state
