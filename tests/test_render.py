"""Renders from a real (tiny) training run: grids, timelapse, walks, per-city, memorisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from flows.cli import app
from gan.checkpoint import load_checkpoint
from gan.images import image_grid
from gan.render import (
    LABEL_WIDTH,
    SampleGridCallback,
    interpolation_gif,
    nearest_neighbours,
    real_vs_fake_by_city,
)
from gan.sampling import load_generator
from shards.cache import load_split
from shards.geometry import centre_window
from shards.layout import DataLayout
from shards.version import DatasetVersion
from tasks.render import render_run
from tasks.train import train_model
from tests.tiny import build_dataset, tiny_job

R = 64  # the test dataset's resolution
CELL = R + 2  # a grid cell with its padding


def grid_size(n: int, nrow: int, side: int = R) -> tuple[int, int]:
    return nrow * (side + 2) + 2, -(-n // nrow) * (side + 2) + 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, run dir, checkpoint, grid callback) of 5 steps with a grid every 2."""
    root = build_dataset(tmp_path_factory.mktemp("render"))
    run_dir = DataLayout.at(root).runs / "rendered"
    grids = SampleGridCallback(run_dir, every_n_steps=2, n=16, seed=0)
    result = train_model(tiny_job(root, steps=5, run="rendered"), [grids])
    return root, run_dir, result["checkpoint"], grids


@pytest.fixture(scope="module")
def generator(trained):
    return load_generator(trained[2])[0]


@pytest.fixture(scope="module")
def version(trained):
    root, _, checkpoint, _ = trained
    return DatasetVersion(DataLayout.at(root).dataset(load_checkpoint(checkpoint)["dataset"]))


def test_image_grid_size_follows_n_and_nrow():
    images = torch.randint(0, 256, (10, 3, 32, 48), dtype=torch.uint8)
    grid = image_grid(images, nrow=4)
    assert grid.size == (4 * 50 + 2, 3 * 34 + 2) and grid.mode == "RGB"
    assert image_grid(images[:2], nrow=8).size == (2 * 50 + 2, 34 + 2)  # never wider than N
    with pytest.raises(ValueError, match="uint8"):
        image_grid(images.float(), nrow=4)


def test_fixed_noise_grids_and_a_timelapse_of_them(trained):
    _, run_dir, _, grids = trained
    names = [p.name for p in grids.paths]
    assert names == ["step-000002.png", "step-000004.png", "step-000005.png"]  # + the last
    for path in grids.paths:
        assert Image.open(path).size == grid_size(16, 4)
    with Image.open(run_dir / "samples" / "timelapse.gif") as gif:
        assert gif.n_frames == len(grids.paths) and gif.size == grid_size(16, 4)
    resumed = SampleGridCallback(run_dir, every_n_steps=2, n=16)
    assert resumed.paths == grids.paths and resumed.last == 5  # a resume continues the timelapse


def test_interpolation_gif_has_points_times_frames_frames(generator, tmp_path):
    path = interpolation_gif(generator, tmp_path / "walk.gif", n_points=3, frames=4, size=(1, 2))
    with Image.open(path) as gif:
        assert gif.n_frames == 12 and gif.size == grid_size(2, 2)
        assert gif.info["loop"] == 0


def test_real_vs_fake_by_city(generator, version, tmp_path):
    path = real_vs_fake_by_city(generator, version, tmp_path / "cities.png", per_city=2)
    with Image.open(path) as image:
        width, height = grid_size(3 * 4, 4)
        assert image.size == (LABEL_WIDTH + width, height)


class Memoriser(nn.Module):
    """A 'generator' that returns train images verbatim, whatever z is."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.nz = 4
        self.register_buffer("images", images.float() / 127.5 - 1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[: len(z)]


def test_nearest_neighbours_finds_a_memorised_image(generator, version, tmp_path):
    path = nearest_neighbours(generator, version, tmp_path / "nn.png", n=3)
    assert Image.open(path).size == grid_size(6, 2)
    strips, _ = load_split(version, "train", workers=1)
    copies = centre_window(strips[[0, 5, 9]]).flip(-1)  # a mirrored window counts too
    path = nearest_neighbours(Memoriser(copies), version, tmp_path / "copies.png", n=3)
    pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB")))
    for row in range(3):
        top = 2 + row * CELL
        fake = pixels[top : top + R, 2 : 2 + R]
        match = pixels[top : top + R, 2 + CELL : 2 + CELL + R]
        assert torch.equal(fake, match)


def test_render_run_writes_the_three_renders(trained, tmp_path):
    root, _, checkpoint, _ = trained
    paths = render_run(checkpoint, root, out_dir=tmp_path)
    assert [p.name for p in paths] == [
        "interpolation.gif",
        "real-vs-fake-by-city.png",
        "nearest-neighbours.png",
    ]
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in paths)


def test_cli_sample_and_interpolate_write_their_files(trained, tmp_path):
    root, _, checkpoint, _ = trained
    runner = CliRunner()
    base = ["--data-root", str(root)]
    out = tmp_path / "grid.png"
    result = runner.invoke(app, [*base, "sample", checkpoint, "--n", "9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == grid_size(9, 3)
    result = runner.invoke(app, [*base, "sample", checkpoint, "--n", "4", "--truncation", "0.5",
                                 "--seed", "3", "--out", str(tmp_path / "t.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    walk = tmp_path / "walk.gif"
    result = runner.invoke(app, [*base, "interpolate", checkpoint, "--frames", "2", "--out", walk])
    assert result.exit_code == 0, result.output
    with Image.open(walk) as gif:
        assert gif.n_frames == 4 * 2


def test_cli_missing_checkpoint_is_one_line_and_exit_1(tmp_path):
    missing = tmp_path / "nope" / "checkpoint.pt"
    for command in (["sample", str(missing)], ["interpolate", str(missing)]):
        result = CliRunner().invoke(app, ["--data-root", str(tmp_path), *command])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "no such checkpoint" in lines[0], result.output
    assert not (tmp_path / "grid.png").exists()
