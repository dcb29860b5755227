"""Options defined once: a typed dataclass field carries its default, help and choices.

Every user-facing setting of msls-gan is a field of one of the step configs
(`SplitConfig`, `ShardConfig`, `TrainConfig`, `ModelConfig`, ...), declared with
`option()`. The CLI flags, the Prefect flow parameters, options.json, dataset.json and
the MLflow params are all derived from those fields (see `flows/options.py`); the
config's own `__post_init__` is the one place its values are validated.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str, *, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field with its help text (and, for strings, the allowed values)."""
    metadata = {"help": help, "choices": tuple(choices)}
    if isinstance(default, list | dict | set):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=metadata)


def help_of(field: dataclasses.Field) -> str:
    """The help text of a field declared with `option()` ("" for plain fields)."""
    return field.metadata.get("help", "")


def choices_of(field: dataclasses.Field) -> tuple[str, ...]:
    return tuple(field.metadata.get("choices", ()))
