"""DAG step: the pictures that judge a run (latent walk, real vs fake per city, memorisation).

`render_run` is the plain function (the CLI and flows call it); `render_task` is the
thin Prefect wrapper. The pictures themselves are drawn by `gan.render`. Attach them
to the run's MLflow run with `tasks.track.log_artifacts(run_id_of(run_dir), paths)`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task

from gan.accelerators import resolve_accelerator
from gan.checkpoint import CheckpointError
from gan.render import interpolation_gif, nearest_neighbours, real_vs_fake_by_city
from gan.sampling import load_generator
from shards.layout import DataLayout
from shards.version import DatasetVersion

INTERPOLATION = "interpolation.gif"
BY_CITY = "real-vs-fake-by-city.png"
NEIGHBOURS = "nearest-neighbours.png"

log = logging.getLogger("msls.render")


def render_run(
    checkpoint: str | Path,
    data_root: str | Path,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> list[Path]:
    """Write the interpolation GIF, per-city grid and nearest-neighbour grid of a checkpoint.

    Real images come from the dataset version the checkpoint was trained on. Files go
    to `out_dir` (default: the checkpoint's run directory); returns their paths.
    """
    checkpoint = Path(checkpoint)
    G, _, state = load_generator(checkpoint, resolve_accelerator(device).device)
    if "dataset" not in state:
        raise CheckpointError(f"{checkpoint}: no dataset version recorded; use one from msls train")
    version = DatasetVersion(DataLayout.at(data_root).dataset(state["dataset"]))
    out = Path(out_dir) if out_dir is not None else checkpoint.parent
    paths = [
        interpolation_gif(G, out / INTERPOLATION, seed=seed),
        nearest_neighbours(G, version, out / NEIGHBOURS, seed=seed),
    ]
    if version.samples("val"):
        paths.insert(1, real_vs_fake_by_city(G, version, out / BY_CITY, seed=seed))
    else:  # a train-only version (--val-fraction 0)
        log.warning("%s has no val split: the real-vs-generated grid is skipped", version.version)
    log.info("renders of %s: %s", checkpoint, ", ".join(p.name for p in paths))
    return paths


render_task = task(name="render")(render_run)
