"""A job's options as CLI flags and as Prefect flow parameters, derived, never copied.

The options themselves are the `option()` fields of the job's configs (tasks/jobs.py,
shards/options.py). `with_options(kind)` gives a function `f(..., **values)` one
keyword parameter per option, typed `T | None = None`: None means "not set here", so a
preset, a `--config` file and the defaults fill in exactly what the caller left out.
Typer reads the parameters as flags (help, `--x/--no-x` for booleans), and
Prefect builds the flow's parameter schema and UI form from the same signature (its
descriptions from the generated "Args:" section of the docstring).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from shards.options import Option, build, options_of
from tasks.presets import with_preset

F = typing.TypeVar("F", bound=Callable[..., Any])


def with_options(*kinds: type, cli: bool = False) -> Callable[[F], F]:
    """Append the options of `kinds` to a function's signature (`**values` gets them).

    `cli=True` annotates them for Typer (flags, help, choices); else they are plain
    typed parameters for a Prefect flow, described in the docstring's Args section.
    """

    def decorate(fn: F) -> F:
        own = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        opts = [opt for kind in kinds for opt in options_of(kind)]
        added = [_parameter(opt, cli) for opt in opts]
        fn.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in (*own, *added)}
        if not cli:
            fn.__doc__ = _with_args(fn.__doc__ or "", opts)
        return fn

    return decorate


def resolve(
    kind: type,
    values: Mapping[str, Any],
    preset: str | None = "auto",
    config: Path | None = None,
) -> Any:
    """The job for these values: explicit values > `config` file > preset > defaults.

    `values` may hold None for "not given"; a config file is YAML of option names (and
    optionally `preset`), unknown names rejected; `preset` None applies none (prepare
    has no presets). ValueError (one line) on bad input.
    """
    given = {k: v for k, v in values.items() if v is not None and v != []}
    from_file = _read_config(config) if config is not None else {}
    file_preset = from_file.pop("preset", None)
    if preset == "auto" and file_preset:
        preset = str(file_preset)
    names = {opt.name for opt in options_of(kind)}
    merged = {**from_file, **given}
    if preset is not None:
        merged = with_preset(preset, merged, names)
    return build(kind, {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _parameter(opt: Option, cli: bool) -> inspect.Parameter:
    if cli:
        annotation: Any = Annotated[_cli_type(opt.type) | None, _typer_option(opt)]
    else:
        annotation = opt.type | None
    return inspect.Parameter(
        opt.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def _cli_type(kind: Any) -> Any:
    """Typer takes a repeated flag for a list, not a tuple of any length."""
    if typing.get_origin(kind) is tuple:
        return list[typing.get_args(kind)[0]]
    return kind


def _typer_option(opt: Option) -> Any:
    """Choices are listed in the help and checked by the config (one line naming them)."""
    declarations = [f"{opt.flag}/--no-{opt.flag[2:]}"] if opt.type is bool else [opt.flag]
    panel = opt.path[0].title() if len(opt.path) > 1 else None  # --help groups by step
    return typer.Option(
        *declarations, help=opt.describe(), show_default=False, rich_help_panel=panel
    )


def _with_args(doc: str, opts: list[Option]) -> str:
    """The docstring with one "Args:" line per option (Prefect's parameter descriptions)."""
    doc = inspect.cleandoc(doc)
    header = "" if "\nArgs:\n" in doc else "\n\nArgs:"
    lines = [f"    {opt.name}: {opt.describe()}" for opt in opts]
    return doc + header + "\n" + "\n".join(lines) + "\n"
