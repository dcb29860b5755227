"""Training from real shards on the CPU: steps, checkpoints, exact resume, DDP with gloo."""

from __future__ import annotations

import json
import os
import pickle
import socket
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan.augment import random_window
from gan.checkpoint import CheckpointError, load_checkpoint
from gan.distributed import average_gradients
from gan.trainer import TrainConfig
from shards.layout import DataLayout
from shards.loader import LoaderConfig
from tasks.train import TrainJob, train_model
from tests.tiny import TINY_MODEL, TINY_TRAIN, build_dataset, tiny_job


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("train"))


job = tiny_job


def test_training_writes_a_complete_checkpoint_and_stats(data_root):
    result = train_model(job(data_root))
    run_dir = DataLayout.at(data_root).runs / result["run"]
    state = load_checkpoint(result["checkpoint"])
    assert result["step"] == state["step"] == 4
    assert {"G", "D", "opt_g", "opt_d", "ema", "ranks", "job", "code_version", "dataset"} <= set(
        state
    )
    assert state["job"]["model"]["ngf"] == 8
    lines = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        assert {"loss_d", "loss_g", "d_real", "d_fake", "images_per_s", "data_wait"} <= set(line)
        assert all(torch.isfinite(torch.tensor(line[k])) for k in ("loss_d", "loss_g"))
    assert json.loads((run_dir / "options.json").read_text())["job"]["steps"] == 4


@pytest.mark.parametrize("cache", ["host", "none"])
def test_resume_continues_exactly(data_root, cache):
    loader = LoaderConfig(cache=cache, workers=0)
    straight = train_model(job(data_root, steps=6, loader=loader, run=f"straight-{cache}"))
    half = train_model(job(data_root, steps=3, loader=loader, run=f"half-{cache}"))
    resumed = train_model(job(data_root, steps=6, loader=loader, resume=half["run"]))
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert b["step"] == 6
    for part in ("G", "D", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"


CONDITIONAL = replace(TINY_MODEL, conditional="city")


def test_conditional_resume_continues_exactly_and_records_the_cities(data_root):
    train = replace(TINY_TRAIN, diffaugment="color,translation", ada_target=0.6)
    loader = LoaderConfig(cache="host", workers=0, city_temperature=0.5)
    run = dict(model=CONDITIONAL, train=train, loader=loader)
    straight = train_model(job(data_root, steps=6, run="cond-straight", **run))
    half = train_model(job(data_root, steps=3, run="cond-half", **run))
    resumed = train_model(job(data_root, steps=6, resume=half["run"], **run))
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert b["step"] == 6
    assert list(a["job"]["model"]["classes"]) == ["austin", "paris", "tokyo"]  # dataset.json order
    assert a["job"]["model"]["conditional"] == "city"
    assert "embed.weight" in a["D"] and "main.1.embed.weight" in a["ema"]
    for part in ("G", "D", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_conditional_models_train_with_other_losses(data_root, loss):
    model = replace(CONDITIONAL, d_norm="layer", spectral_norm=loss == "hinge")
    train = replace(TINY_TRAIN, loss=loss, d_steps=2, r1_gamma=1.0, r1_every=2)
    result = train_model(job(data_root, steps=2, train=train, model=model))
    state = load_checkpoint(result["checkpoint"])
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())


@pytest.mark.parametrize("loss", ["bce", "hinge", "wgan-gp"])
def test_every_loss_trains(data_root, loss):
    model = replace(TINY_MODEL, d_norm="layer") if loss == "wgan-gp" else TINY_MODEL
    train = replace(
        TINY_TRAIN,
        loss=loss,
        d_steps=2 if loss == "wgan-gp" else 1,
        label_smoothing=0.1 if loss == "bce" else 0.0,
    )
    result = train_model(job(data_root, steps=2, train=train, model=model))
    state = load_checkpoint(result["checkpoint"])
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())


def test_bad_options_fail_before_training(data_root):
    with pytest.raises(ValueError, match="give --steps, --epochs or --minutes"):
        TrainJob(data_root=str(data_root))
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown"):
        TrainJob.from_dict({"steps": 1, "warp_drive": True})


def test_a_pickle_payload_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": 1, "G": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


def test_random_window_shifts_and_flips_within_the_strip():
    strips = torch.arange(128, dtype=torch.uint8).repeat(4, 3, 64, 1)  # column index as value
    gen = torch.Generator().manual_seed(0)
    out = random_window(strips, gen, flip=True)
    assert out.shape == (4, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    columns = ((out[:, 0, 0] + 1) * 127.5).round()
    steps = columns[:, 1:] - columns[:, :-1]
    assert ((steps == 1).all(1) | (steps == -1).all(1)).all()  # contiguous, maybe mirrored
    many = random_window(strips.repeat(64, 1, 1, 1), gen, flip=True)
    firsts = ((many[:, 0, 0, 0] + 1) * 127.5).round()
    assert firsts.min() < 16 and firsts.max() > 112  # windows across the whole strip


def _average(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    layer = torch.nn.Linear(2, 1)
    layer.weight.grad = torch.full((1, 2), float(rank))
    layer.bias.grad = torch.tensor([2.0 * rank])
    average_gradients(layer)
    out[rank] = (layer.weight.grad.tolist(), layer.bias.grad.tolist())
    dist.destroy_process_group()


def test_gradients_are_averaged_over_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_average, args=(port, out), nprocs=2)
    assert out[0] == out[1] == ([[0.5, 0.5]], [1.0])


@pytest.mark.slow
def test_two_cpu_ranks_with_gloo_train_and_resume(data_root):
    """One conditional run of two ranks, then its resume: two torchrun launches (each
    starts three processes). Unconditional ranks run in test_track_ddp."""
    loader = LoaderConfig(cache="host", workers=0)
    ddp = dict(nproc=2, model=CONDITIONAL, loader=loader)
    result = train_model(job(data_root, steps=2, run="ddp", **ddp))
    state = load_checkpoint(result["checkpoint"])
    assert state["step"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"], state["ranks"][1]["rng"])
    assert list(state["job"]["model"]["classes"]) == ["austin", "paris", "tokyo"]
    resumed = train_model(job(data_root, steps=4, resume="ddp", **ddp))
    assert load_checkpoint(resumed["checkpoint"])["step"] == 4
    with pytest.raises(ValueError, match="--nproc 2"):
        train_model(job(data_root, steps=6, nproc=1, resume="ddp"))


@torch._dynamo.register_backend
def always_fails(graph, example_inputs):
    raise RuntimeError("this backend cannot compile anything")


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(data_root):
    train = replace(TINY_TRAIN, compile="always_fails")
    with pytest.warns(
        UserWarning, match="torch.compile\\('always_fails'\\) failed, training eagerly"
    ):
        result = train_model(job(data_root, steps=2, train=train))
    assert load_checkpoint(result["checkpoint"])["step"] == 2


@pytest.mark.slow
def test_compiled_training_runs(data_root):
    train = replace(TINY_TRAIN, compile="inductor")
    result = train_model(job(data_root, steps=2, train=train))
    state = load_checkpoint(result["checkpoint"])
    assert not any(k.startswith("_orig_mod") for k in state["G"])  # plain module state
