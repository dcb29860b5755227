"""The `msls` command: the same flows as the deployments, run in this process.

It holds no logic of its own: it parses options, runs a flow, prints what came out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from flows.options import resolve, with_options
from gan.metrics import EvalConfig
from shards.layout import DATA_ROOT_ENV, DataLayout
from shards.options import flat
from tasks.jobs import PrepareJob, TrainJob
from tasks.presets import PRESET_NAMES

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
@with_options(PrepareJob, cli=True)
def prepare(ctx: typer.Context, **options: Any) -> None:
    """Download/catalog/split/shard MSLS into a dataset version (a no-op if it exists)."""
    from flows.prepare import prepare as prepare_flow

    layout: DataLayout = ctx.obj
    with _errors():
        job = resolve(PrepareJob, options, preset=None)  # bad options: one line, no Prefect
        result = prepare_flow(data_root=str(layout.root), **flat(job))
    _print_dataset(layout, result["version"], built=result["built"])
    if "published" in result:
        console.print(f"published: {result['published']}")


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
@with_options(TrainJob, EvalConfig, cli=True)
def train(
    ctx: typer.Context,
    preset: Annotated[
        str,
        typer.Option(
            help=f"Named configuration under the options given: {', '.join(PRESET_NAMES)}. "
            "cpu is the quickstart's, dcgan the paper's; auto picks cpu or gpu by device.",
        ),
    ] = "auto",
    config: Annotated[
        Path | None, typer.Option(help="YAML of option names to values (and `preset`).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved options and stop.")] = False,
    **options: Any,
) -> None:
    """Train, render and evaluate on a dataset version; tracked in MLflow.

    Options: explicit flags > --config file > --preset > defaults. With --nproc > 1 it
    trains under torchrun, tracked, rendered and evaluated as one process is.
    """
    from tasks.jobs import PipelineJob

    layout: DataLayout = ctx.obj
    with _errors():
        resolved = resolve(PipelineJob, {**options, "source": ""}, preset, config)
        job = replace(resolved.job, data_root=str(layout.root))
        if dry_run:
            console.print_json(
                json.dumps({**job.to_dict(), "evaluation": asdict(resolved.evaluation)})
            )
            return
        from flows.train import train as train_flow
        from tasks.train import pin_dataset

        pin_dataset(job)  # a missing version or too small a split: one line, nothing started
        values = {**flat(job), **flat(resolved.evaluation)}
        result = train_flow(source="", data_root=str(layout.root), **values)
    console.print(f"run {result['run']}: checkpoint {result['checkpoint']}")
    if "report" in result:
        console.print(
            f"report: {result['report']}\nMLflow run: {result['mlflow_run_id']} (`msls ui`)"
        )


CITY_HELP = "A city of a conditional checkpoint (as in its dataset); empty: every city."
NIGHT_HELP = "Night frames (a checkpoint trained with --conditional city,night)."


@app.command()
def sample(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint.pt from data/runs/<run>/.")],
    n: Annotated[int, typer.Option(help="Images to draw.")] = 64,
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("grid.png"),
    truncation: Annotated[
        float | None, typer.Option(help="Redraw latents with |z| > T (sharper, less varied).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Latent seed: the same seed, the same images.")] = 0,
    city: Annotated[str, typer.Option(help=CITY_HELP)] = "",
    night: Annotated[bool, typer.Option("--night", help=NIGHT_HELP)] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps or hpu.")] = "cpu",
) -> None:
    """Draw a grid of samples from a checkpoint's EMA generator."""
    import math

    from gan.accelerators import resolve_accelerator
    from gan.images import image_grid
    from gan.render import save_image
    from gan.sampling import city_labels, generate, load_generator

    with _errors():
        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        accelerator = resolve_accelerator(device)
        G, config, _ = load_generator(checkpoint, accelerator.device)
        labels = city_labels(config, n, city, night)
        images = generate(
            G, n, seed=seed, device=accelerator.device, truncation=truncation, labels=labels
        )
        save_image(image_grid(images, math.ceil(math.sqrt(n))), out)
    console.print(f"{n} samples -> {out}")


@app.command()
def interpolate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint.pt from data/runs/<run>/.")],
    out: Annotated[Path, typer.Option(help="GIF to write.")] = Path("walk.gif"),
    points: Annotated[int, typer.Option(help="Latents each loop walks through.")] = 4,
    frames: Annotated[int, typer.Option(help="Frames between two latents.")] = 16,
    seed: Annotated[int, typer.Option(help="Latent seed.")] = 0,
    city: Annotated[str, typer.Option(help=CITY_HELP)] = "",
    to_city: Annotated[
        str, typer.Option(help="Walk the same latents from --city to this city instead.")
    ] = "",
    night: Annotated[bool, typer.Option("--night", help=NIGHT_HELP)] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps or hpu.")] = "cpu",
) -> None:
    """A GIF of looping SLERP walks through latent space (or, with --to-city, between
    two cities at fixed latents), side by side."""
    from gan.accelerators import resolve_accelerator
    from gan.render import city_morph_frames, interpolation_gif, save_gif
    from gan.sampling import city_index, load_generator

    with _errors():
        G, config, _ = load_generator(checkpoint, resolve_accelerator(device).device)
        if night and not city:
            raise ValueError("--night needs --city: the city to walk through by night")
        start = city_index(config, city, night) if city else None
        if to_city:
            if start is None:
                raise ValueError("--to-city needs --city: the city to walk from")
            end = city_index(config, to_city, night)
            walk = city_morph_frames(G, start, end, frames, seed)
            save_gif(walk, out)
        else:
            interpolation_gif(G, out, n_points=points, frames=frames, seed=seed, city=start)
    console.print(f"{2 * frames if to_city else points * frames} frames -> {out}")


@app.command()
def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """The MLflow UI on the data root's tracking store, until Ctrl-C."""
    import os
    import socket

    from tasks.track import tracking_uri

    layout: DataLayout = ctx.obj
    with _errors():
        uri = tracking_uri(layout.root)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise ValueError(f"port {port} on 127.0.0.1 is in use; try --port") from None
    artifacts = layout.mlflow_artifacts.resolve().as_uri()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        uri,
        "--artifacts-destination",
        str(artifacts),
        "--workers",
        "1",
    ]
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # 2 processes instead of 16
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    console.print(f"MLflow UI: http://127.0.0.1:{port} (store {uri}); Ctrl-C stops it")
    sys.stdout.flush()
    # Become the server: Ctrl-C and kill reach it directly, no orphan is left behind, and
    # the ~800 MB of torch and Prefect this process imported are not held while it runs.
    os.execve(sys.executable, command, env)


@app.command()
@with_options(EvalConfig, cli=True)
def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint.pt from data/runs/<run>/.")],
    dataset: Annotated[str | None, typer.Option(help="Version to judge against.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps or hpu.")] = "auto",
    **options: Any,
) -> None:
    """Judge a checkpoint: evaluation.json and report.html beside it."""
    from tasks.evaluate import evaluate_checkpoint
    from tasks.verdicts import summary_markdown

    layout: DataLayout = ctx.obj
    with _errors():
        judge: EvalConfig = resolve(EvalConfig, options, preset=None)
        result = evaluate_checkpoint(checkpoint, layout.root, dataset, judge, device=device)
    console.print(summary_markdown(result), highlight=False)
    console.print(f"written: {checkpoint.parent / 'evaluation.json'}, report.html")


@app.command()
def promote(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="A run name under data/runs, or an MLflow run id.")],
    alias: Annotated[str, typer.Option(help="Registry alias to point at it.")] = "champion",
) -> None:
    """Point models:/msls-dcgan@ALIAS at the newest version a run registered."""
    from tasks.track import promote_run

    layout: DataLayout = ctx.obj
    with _errors():
        version = promote_run(run, alias, layout.root)
    console.print(f"models:/msls-dcgan@{alias} -> version {version.version} (run {version.run_id})")


@app.command()
def quickstart(
    ctx: typer.Context,
    minutes: Annotated[
        float | None,
        typer.Option(
            help="Training budget of the demo run in minutes (default: preset cpu's steps)."
        ),
    ] = None,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
) -> None:
    """The whole job: local Prefect server, worker and MLflow; deploy; run msls-train."""
    from flows.services import ServiceError, Services

    layout: DataLayout = ctx.obj
    services = Services(layout, prefect_port, mlflow_port)
    try:
        for step, action in [
            ("Prefect server", services.start_prefect),
            ("MLflow server", services.start_mlflow),
            ("deployments", services.deploy),
            ("worker", services.start_worker),
        ]:
            console.print(f"[bold]starting {step}[/]")
            action()
        console.print("[bold]running msls-train/msls-train[/] (synthetic MSLS, preset cpu)")
        params = {"data_root": str(layout.root.resolve())}
        if minutes is not None:
            params["minutes"] = minutes
        services.run_training(params, timeout=1800)
    except (ServiceError, OSError, subprocess.TimeoutExpired) as exc:
        fail(f"{exc}; `msls stop` ends the services")
    console.print(
        f"done. Prefect UI: {services.prefect_url}  MLflow UI: {services.mlflow_url}\n"
        f"report: the newest {layout.runs}/*/report.html\n`msls stop` ends the services."
    )


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the Prefect server, worker and MLflow server that quickstart started."""
    from flows.services import Services

    stopped = Services(ctx.obj).stop()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line and exit 1; bugs still raise."""
    from shards.errors import DiskFullError
    from shards.lock import LockBusyError

    try:
        yield
    except (ValueError, FileNotFoundError, PermissionError, DiskFullError, LockBusyError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _print_dataset(layout: DataLayout, version: str, built: bool) -> None:
    from shards.dataset import load_info

    info = load_info(layout, version)
    splits = sorted(info.counts, key=["train", "val", "ood"].index)
    table = Table(title=f"dataset {version} ({'built' if built else 'already there'})")
    table.add_column("city")
    for split in splits:
        table.add_column(split, justify="right")
    for city in info.cities:
        table.add_row(city, *(str(info.counts[s].get(city, "")) for s in splits))
    table.add_row("total", *(str(info.totals[s]) for s in splits), style="bold")
    console.print(table)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(info.dropped.items())) or "none"
    console.print(f"dropped: {dropped}")
    console.print(f"version: {version}\nshards:  {layout.dataset(version)}")


if __name__ == "__main__":
    sys.exit(app())
