"""Options defined once: a typed dataclass field carries its default, help and choices.

Every user-facing setting of msls-gan is a field of one of the step configs
(`SplitConfig`, `ShardConfig`, `TrainConfig`, `ModelConfig`, ...), declared with
`option()`; the config's own `__post_init__` is the one place its values are
validated. A job dataclass nests the step configs (`TrainJob.train`, `.model`, ...),
and `options_of(job)` flattens the tree into named options: the CLI flags, the Prefect
flow parameters, options.json, dataset.json and the MLflow params are all derived
from that list (flows/options.py). Plain fields (no `option()`) are internal: derived
from other settings or from the data, never set by a user.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any


def option(default: Any, help: str, *, choices: tuple[str, ...] = (), name: str = "") -> Any:
    """A dataclass field that users set: its default, help text and allowed strings.

    `name` overrides the option's flat name where a field name would be ambiguous
    (SplitConfig.seed is the option `split_seed`, TrainConfig.seed is `seed`).
    """
    if isinstance(default, list | dict | set):
        raise TypeError("option defaults must be immutable (use a tuple)")
    metadata = {"help": help, "choices": tuple(choices), "name": name}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One user-facing setting, flattened out of a nested config."""

    name: str  # snake_case: the flow parameter and MLflow param; the CLI flag is --kebab-case
    path: tuple[str, ...]  # where it lives in the nested config, e.g. ("train", "batch_size")
    type: Any  # the field's annotation, resolved
    default: Any
    help: str
    choices: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """Help text with the allowed values and the default, for the CLI and the flow UI."""
        named = (choice or "'' (off)" for choice in self.choices)  # "" is a real value
        allowed = f" One of: {', '.join(named)}." if self.choices else ""
        return f"{self.help}{allowed} Default: {_show(self.default)}."


def options_of(kind: type) -> list[Option]:
    """Every option of a config dataclass and of the config dataclasses nested in it.

    Raises TypeError when two options share a name: each must be settable alone.
    """
    found = list(_walk(kind, ()))
    seen: dict[str, Option] = {}
    for opt in found:
        if opt.name in seen:
            raise TypeError(
                f"option {opt.name!r} is defined twice: {opt.path} and {seen[opt.name].path}"
            )
        seen[opt.name] = opt
    return found


def _walk(kind: type, prefix: tuple[str, ...]) -> Iterator[Option]:
    hints = typing.get_type_hints(kind)
    for f in fields(kind):
        annotation = hints[f.name]
        if is_dataclass(annotation):
            yield from _walk(annotation, (*prefix, f.name))
        elif "help" in f.metadata:
            name = f.metadata["name"] or f.name
            yield Option(
                name, (*prefix, f.name), annotation, f.default, f.metadata["help"],
                f.metadata["choices"],
            )  # fmt: skip


def build(kind: type, values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> Any:
    """`kind` from flat option values laid over a nested `base` (e.g. a saved config).

    Unknown names are rejected (ValueError naming them), never silently dropped.
    """
    by_name = {opt.name: opt for opt in options_of(kind)}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"unknown options: {', '.join(unknown)}; see --help for the known ones")
    nested = copy.deepcopy(dict(base or {}))
    for name, value in values.items():
        *parents, leaf = by_name[name].path
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return from_dict(kind, nested)


def from_dict(kind: type, data: Mapping[str, Any]) -> Any:
    """Inverse of `dataclasses.asdict`: nested dicts back into configs, lists into tuples.

    Unknown keys are rejected (ValueError naming them); missing ones take their defaults.
    """
    hints = typing.get_type_hints(kind)
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} options: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        if is_dataclass(annotation) and isinstance(value, Mapping):
            value = from_dict(annotation, value)
        elif _is_tuple(annotation) and isinstance(value, list | tuple):
            value = tuple(value)
        values[name] = value
    return kind(**values)


def flat(config: Any) -> dict[str, Any]:
    """{option name: value} of a config: what MLflow records as params."""
    values = {}
    for opt in options_of(type(config)):
        value = config
        for key in opt.path:
            value = getattr(value, key)
        values[opt.name] = value
    return values


def _is_tuple(annotation: Any) -> bool:
    return annotation is tuple or typing.get_origin(annotation) is tuple


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if value == "" or value is None:
        return "none"
    return str(value)
