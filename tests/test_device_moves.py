"""A checkpoint moved between device types (#14, fault 5).

Checkpoints written on CUDA or MPS hold device generator states a CPU run cannot set
("Expected a CPUGeneratorImplState of size 5056 but found 16"). Without a GPU the CUDA
layout is forged as case20 does: the 16-byte Philox state (seed, offset) in place of the
trainer's noise generator and the cached loader's batch generator.
"""

from __future__ import annotations

import logging
import shutil
import struct

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from gan.checkpoint import load_checkpoint, save_checkpoint
from gan.metrics import EvalConfig
from shards.rng import set_state
from tasks.evaluate import evaluate_checkpoint
from tasks.train import train_model
from tests.tiny import build_dataset, tiny_job

PHILOX = torch.tensor(list(struct.pack("<Qq", 1234, 40)), dtype=torch.uint8)  # CUDA's layout


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root with a 2-step CPU run named 'cpu'."""
    root = build_dataset(tmp_path_factory.mktemp("device-moves"))
    train_model(tiny_job(root, run="cpu", steps=2))
    return root


def from_cuda(root, name: str) -> str:
    """Run 'cpu' copied as `name`, its random states in CUDA's layout (case20)."""
    target = root / "runs" / name
    shutil.copytree(root / "runs" / "cpu", target)
    state = load_checkpoint(target / "checkpoint.pt")
    for rank in state["ranks"]:
        rank["rng"], rank["data"]["generator"] = PHILOX.clone(), PHILOX.clone()
    save_checkpoint(target / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    return name


def test_a_cuda_checkpoint_resumes_on_cpu_saying_so_once(root, caplog):
    with caplog.at_level(logging.WARNING, logger="msls.train"):
        result = train_model(tiny_job(root, steps=4, resume=from_cuda(root, "gpu")))
    assert result["step"] == 4
    said = [r.getMessage() for r in caplog.records if "another device type" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and "re-seeded deterministically" in said[0]


def test_the_reseeded_resume_is_deterministic(root):
    weights = [
        load_checkpoint(
            train_model(tiny_job(root, steps=3, resume=from_cuda(root, n)))["checkpoint"]
        )
        for n in ("gpu-a", "gpu-b")
    ]
    assert all(torch.equal(weights[0]["G"][k], weights[1]["G"][k]) for k in weights[0]["G"])


def test_a_state_of_the_right_layout_is_set_exactly():
    source = torch.Generator().manual_seed(7)
    target = torch.Generator()
    assert set_state(target, source.get_state())
    assert torch.equal(torch.randn(4, generator=target), torch.randn(4, generator=source))
    assert not set_state(target, PHILOX)  # another device's layout: re-seeded
    again = torch.Generator()
    set_state(again, PHILOX)
    assert torch.equal(torch.randn(4, generator=target), torch.randn(4, generator=again))


def test_sample_interpolate_and_evaluate_take_a_cuda_checkpoint(root, tmp_path):
    checkpoint = str(root / "runs" / from_cuda(root, "gpu-render") / "checkpoint.pt")
    base = ["--data-root", str(root)]
    for args in (
        ["sample", checkpoint, "--n", "4", "--out", str(tmp_path / "g.png")],
        ["interpolate", checkpoint, "--frames", "2", "--out", str(tmp_path / "w.gif")],
    ):
        result = CliRunner().invoke(app, [*base, *args, "--device", "cpu"])
        assert result.exit_code == 0, result.output
    evaluation = evaluate_checkpoint(
        checkpoint, root, config=EvalConfig(samples=16), out_dir=tmp_path / "eval",
        device="cpu", workers=1,
    )  # fmt: skip
    assert evaluation["step"] == 2
