"""The `msls` command: the same flows as the deployments, run in this process.

It holds no logic of its own: it parses options, runs a flow, prints what came out.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from shards.layout import DATA_ROOT_ENV, DataLayout

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="MSLS street photos -> versioned WebDataset shards -> a DCGAN, judged.",
)
console = Console()


@app.callback()
def main(
    ctx: typer.Context,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", envvar=DATA_ROOT_ENV, help="Data root (default ./data)."),
    ] = None,
) -> None:
    ctx.obj = DataLayout.at(data_root)
    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
    logger = logging.getLogger("msls")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Prefect's root handler would print every line twice


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def prepare(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Option(help="synthetic, a folder of MSLS zips, or a links file.")
    ] = "synthetic",
    resolution: Annotated[int, typer.Option(help="Training resolution: 64 or 128.")] = 64,
    val_fraction: Annotated[
        float, typer.Option(help="Share of each city's images held out.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Split seed (and synthetic source seed).")] = 0,
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 5000,
    include_panos: Annotated[
        bool, typer.Option(help="Keep panoramas (dropped by default).")
    ] = False,
    synthetic_images: Annotated[int, typer.Option(help="Size of the synthetic source.")] = 2000,
    synthetic_cities: Annotated[int, typer.Option(help="Cities in the synthetic source.")] = 8,
) -> None:
    """Download/catalog/split/shard MSLS into a dataset version (a no-op if it exists)."""
    from flows.prepare import prepare as prepare_flow
    from flows.prepare import prepare_configs

    params = dict(
        resolution=resolution,
        val_fraction=val_fraction,
        seed=seed,
        shard_size=shard_size,
        include_panos=include_panos,
        synthetic_images=synthetic_images,
        synthetic_cities=synthetic_cities,
    )
    layout: DataLayout = ctx.obj
    with _errors():
        prepare_configs(**params)
        result = prepare_flow(source=source, data_root=str(layout.root), **params)
    _print_dataset(layout, result["version"], built=result["built"])


@app.command()
def verify(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="A version id, or latest.")] = "latest",
) -> None:
    """Decode every sample of a version and check it against its manifest."""
    from shards.dataset import resolve_version
    from shards.verify import verify_dataset

    layout: DataLayout = ctx.obj
    with _errors():
        report = verify_dataset(layout.dataset(resolve_version(layout, version)))
    for problem in report.problems[:50]:
        console.print(f"[red]x[/] {problem}", highlight=False)
    if not report.ok:
        fail(
            f"dataset {report.version}: {len(report.problems)} problems; "
            "rebuild it with `msls prepare`"
        )
    console.print(
        f"dataset {report.version}: {report.samples} samples in {report.shards} shards, all good"
    )


@app.command()
def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="Dataset version id, or latest.")] = "latest",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps or hpu.")] = "auto",
    steps: Annotated[int, typer.Option(help="Generator steps to train for.")] = 0,
    epochs: Annotated[float, typer.Option(help="Passes over the train split.")] = 0.0,
    minutes: Annotated[float, typer.Option(help="Wall-clock budget.")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Batch size per process.")] = 128,
    loss: Annotated[str, typer.Option(help="bce, hinge or wgan-gp.")] = "bce",
    generator: Annotated[str, typer.Option(help="transposed or upsample.")] = "transposed",
    width: Annotated[int, typer.Option(help="ngf = ndf (64 is the paper's DCGAN).")] = 64,
    cache: Annotated[str, typer.Option(help="auto, none, host or device.")] = "auto",
    city_temperature: Annotated[float, typer.Option(help="1 natural, 0 city-balanced.")] = 1.0,
    nproc: Annotated[int, typer.Option(help="Processes (devices) via torchrun.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[str, typer.Option(help="A run name or checkpoint.pt to continue.")] = "",
) -> None:
    """Train the DCGAN on a dataset version (progress bar, checkpoints, resume)."""
    from tasks.train import train_job

    layout: DataLayout = ctx.obj
    with _errors():
        job = train_job(
            data_root=str(layout.root), dataset=dataset, device=device, steps=steps, epochs=epochs,
            minutes=minutes, batch_size=batch_size, loss=loss, generator=generator, width=width,
            cache=cache, city_temperature=city_temperature, nproc=nproc, seed=seed, resume=resume,
        )  # fmt: skip
        from tasks.train import train_model

        result = train_model(job)
    console.print(f"run {result['run']}: step {result['step']}, checkpoint {result['checkpoint']}")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line and exit 1; bugs still raise."""
    try:
        yield
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _print_dataset(layout: DataLayout, version: str, built: bool) -> None:
    from shards.dataset import load_info

    info = load_info(layout, version)
    splits = sorted(info["counts"], key=["train", "val", "ood"].index)
    table = Table(title=f"dataset {version} ({'built' if built else 'already there'})")
    table.add_column("city")
    for split in splits:
        table.add_column(split, justify="right")
    for city in info["cities"]:
        table.add_row(city, *(str(info["counts"][s].get(city, "")) for s in splits))
    table.add_row("total", *(str(info["totals"][s]) for s in splits), style="bold")
    console.print(table)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(info["dropped"].items())) or "none"
    console.print(f"dropped: {dropped}")
    console.print(f"version: {version}\nshards:  {layout.dataset(version)}")


if __name__ == "__main__":
    sys.exit(app())
