"""The data-efficient training options each do what they say, on real tensors and steps:
DiffAugment, ADA's p, spectral norm, TTUR, lazy R1, label smoothing, EMA BatchNorm."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from gan.accelerators import resolve_accelerator
from gan.augment import AdaptiveStrength, diff_augment, parse_policy
from gan.checkpoint import load_checkpoint
from gan.ema import EMA
from gan.health import DONE, batch_spread, diversity, health_warnings, remedy
from gan.loop import LoopConfig
from gan.losses import BceLoss, make_loss, r1_penalty
from gan.models import ModelConfig, build_models
from gan.trainer import PROBE_BN_BATCHES, TrainConfig, Trainer
from shards.layout import DataLayout
from tasks.train import train_model
from tests.tiny import TINY_MODEL, TINY_TRAIN, build_dataset, tiny_job

ALL = "color,translation,cutout"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("learning"))


def trainer(**train) -> Trainer:
    config = replace(TINY_TRAIN, **train)
    return Trainer(config, TINY_MODEL, resolve_accelerator("cpu"))


def strips(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One D step's batch: (uint8 strips [8, 3, 64, 128], city int64 [8])."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 256, (8, 3, 64, 128), dtype=torch.uint8, generator=g)
    return [(batch, torch.zeros(8, dtype=torch.int64))]


def images(n: int = 8) -> torch.Tensor:
    """float [n, 3, 64, 64] in (-1, 1), no pixel exactly 0 (so cutout's zeros show)."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 64, 64, generator=g) * 0.9 + 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"diffaugment": "color,blur"}, "diffaugment: unknown transform 'blur'"),
        ({"ada_target": 0.6}, "ada_target needs a diffaugment policy"),
        ({"ada_target": 1.5, "diffaugment": "color"}, "ada_target must be in [0, 1)"),
        (
            {"ada_target": 0.6, "diffaugment": "color", "loss": "wgan-gp"},
            "ada_target needs logits whose sign is D's verdict, not wgan-gp's",
        ),
        ({"r1_gamma": -1.0}, "r1_gamma must be >= 0"),
        ({"r1_every": 0}, "r1_every must be >= 1"),
        ({"lr_d": 0.0}, "learning rates lr_g and lr_d must be > 0"),
        ({"label_smoothing": 0.1, "loss": "hinge"}, "label_smoothing applies to the bce loss"),
        ({"ema_bn_batches": -1}, "ema_bn_batches must be >= 0"),
    ],
)
def test_bad_option_values_fail_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**kwargs)


def test_diffaugment_translation_shifts_whole_pixels_and_fills_with_zeros():
    x = images(64)
    g = torch.Generator().manual_seed(0)
    moved = diff_augment(x, parse_policy("translation"), torch.tensor(1.0), g)
    shifted = 0
    for before, after in zip(x, moved):
        zeros = after == 0
        assert (after[~zeros] != 0).all()
        found = [
            (dy, dx)
            for dy in range(-8, 9)
            for dx in range(-8, 9)
            if torch.equal(_shift(before, dy, dx), after)
        ]
        assert len(found) == 1, "each sample is one integer shift of at most 1/8 of the side"
        shifted += found[0] != (0, 0)
    assert shifted > 48  # 1 in 289 shifts is (0, 0)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x [3, H, W] moved so that out[i, j] = x[i + dy, j + dx], zeros outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[1:]
    out[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = x[
        :, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


def test_diffaugment_cutout_zeroes_one_square_of_at_most_half_the_side():
    x = images(32)
    cut = diff_augment(x, parse_policy("cutout"), torch.tensor(1.0), torch.Generator())
    for after in cut:
        rows, cols = torch.nonzero((after == 0).all(dim=0), as_tuple=True)
        assert 16 <= rows.max() - rows.min() + 1 <= 32 and 16 <= cols.max() - cols.min() + 1 <= 32
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert len(rows) == area  # a filled rectangle, clipped by the image edge


def test_diffaugment_colour_moves_brightness_saturation_contrast_per_sample():
    x = images(16)
    out = diff_augment(x, parse_policy("color"), torch.tensor(1.0), torch.Generator())
    assert out.shape == x.shape and not torch.equal(out, x)
    means = out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
    assert means.std() > 0.05  # each sample its own brightness


def test_diffaugment_is_differentiable_and_p_gates_it():
    x = images().requires_grad_(True)
    policy = parse_policy(ALL)
    out = diff_augment(x, policy, torch.tensor(1.0), torch.Generator().manual_seed(0))
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = diff_augment(x, policy, torch.tensor(0.0), torch.Generator())
    assert torch.equal(same, x)


def test_every_d_call_sees_augmented_images_real_fake_and_gs_pass():
    """With cutout on, every image D gets (real, fake, and the fakes of G's update) has its
    square of zeros; without a policy none has."""
    for policy, expect_cut in (("cutout", True), ("", False)):
        t = trainer(diffaugment=policy)
        seen: list[torch.Tensor] = []
        d_forward = t.d_forward
        t.d_forward = lambda x, y, seen=seen, d=d_forward: (
            seen.append(x.detach().clone()) or d(x, y)
        )
        t.train_step(strips())
        assert len(seen) == 3  # D on real, D on fake, D in G's update
        for batch in seen:
            zeros = (batch == 0).all(dim=1).flatten(1).sum(dim=1)
            assert bool((zeros >= 16 * 16).all()) == expect_cut


def test_gs_update_leaves_ds_gradients_alone_and_d_trainable():
    """G's pass through D computes no D weight gradients (they were thrown away), yet G
    gets its gradient and D still trains at the next step."""
    t = trainer()
    at_d_update: list[list[torch.Tensor]] = []
    d_step = t.opt_d.step
    t.opt_d.step = lambda: (
        at_d_update.append([p.grad.clone() for p in t.D.parameters()]) or d_step()
    )
    t.train_step(strips())
    assert all(torch.equal(p.grad, g) for p, g in zip(t.D.parameters(), at_d_update[0]))
    assert all(p.requires_grad for p in t.D.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.G.parameters())
    t.train_step(strips())
    assert len(at_d_update) == 2


def test_ada_p_rises_when_d_overfits_falls_when_not_and_stays_in_0_1():
    ada = AdaptiveStrength(target=0.6, kimg=1.0, device=torch.device("cpu"))
    assert ada.p.item() == 0.0
    for _ in range(5):
        ada.update(torch.tensor(1.0), images=100)  # every real logit positive: overfitting
    assert math.isclose(ada.p.item(), 0.5, abs_tol=1e-6)  # 100 images / 1,000 per unit
    for _ in range(20):
        ada.update(torch.tensor(1.0), images=100)
    assert ada.p.item() == 1.0
    ada.update(torch.tensor(0.2), images=300)
    assert math.isclose(ada.p.item(), 0.7, abs_tol=1e-6)
    off = AdaptiveStrength(target=0.0, kimg=1.0, device=torch.device("cpu"))
    off.update(torch.tensor(1.0), images=100)
    assert off.p.item() == 1.0  # plain DiffAugment: always applied
    none = AdaptiveStrength(target=0.0, kimg=1.0, device=torch.device("cpu"), augmenting=False)
    assert none.p.item() == 0.0  # no augmentation: the metrics report p 0, not 1


def test_ada_p_moves_in_training_and_is_in_the_metrics_and_checkpoint():
    t = trainer(diffaugment=ALL, ada_target=0.6, ada_kimg=0.1)  # 8 images: p moves 0.08
    t.ada.p.fill_(0.5)
    ps = [0.5] + [t.train_step(strips(i))[6].item() for i in range(4)]  # METRICS[6]: ada_p
    assert all(math.isclose(abs(b - a), 0.08, abs_tol=1e-6) for a, b in itertools.pairwise(ps))
    assert t.state_dict()["ada_p"].item() == t.ada.p.item() == ps[-1]


def test_spectral_norm_keeps_the_paper_counts_and_makes_d_1_lipschitz_per_layer():
    plain = build_models(ModelConfig())[1]
    with_sn = build_models(ModelConfig(spectral_norm=True))[1]
    count = sum(p.numel() for p in plain.parameters())
    assert count == sum(p.numel() for p in with_sn.parameters()) == 2_765_568
    with torch.no_grad():
        for _ in range(30):  # power iteration runs once per forward in train mode
            with_sn(torch.randn(2, 3, 64, 64))
    convs = [m for m in with_sn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert math.isclose(sigma.item(), 1.0, rel_tol=0.05)
    sigmas = [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2) for m in plain.modules()
              if isinstance(m, nn.Conv2d)]  # fmt: skip
    assert all(s < 0.9 or s > 1.1 for s in sigmas)  # not 1 by accident of the init


def test_ttur_learning_rates_reach_their_optimisers():
    t = trainer(lr_g=1e-4, lr_d=4e-4)
    assert t.opt_g.param_groups[0]["lr"] == 1e-4 and t.opt_d.param_groups[0]["lr"] == 4e-4


def test_r1_is_half_gamma_times_the_squared_input_gradient():
    w = torch.randn(3 * 4 * 4, requires_grad=True)
    real = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = real.flatten(1) @ w  # a linear D: its input gradient is w for every sample
    penalty = r1_penalty(logits, real, gamma=2.0)
    assert math.isclose(penalty.item(), w.square().sum().item(), rel_tol=1e-5)
    penalty.backward()  # create_graph: the penalty's own gradient reaches D's weights
    assert torch.allclose(w.grad, 2.0 * w.detach())


def test_lazy_r1_changes_d_only_on_its_steps():
    def d_after_one_step(step: int, gamma: float) -> list[torch.Tensor]:
        t = trainer(r1_gamma=gamma, r1_every=4)
        t.step = step
        t.train_step(strips())
        return [p.detach().clone() for p in t.D.parameters()]

    due, off = d_after_one_step(4, 10.0), d_after_one_step(4, 0.0)
    assert any(not torch.equal(a, b) for a, b in zip(due, off))
    lazy, off = d_after_one_step(5, 10.0), d_after_one_step(5, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(lazy, off))


def test_label_smoothing_option_reaches_the_loss():
    t = trainer(label_smoothing=0.1)
    assert t.loss == BceLoss(0.1)
    logit = torch.tensor([math.log(0.9 / 0.1)], requires_grad=True)  # sigmoid = 0.9
    t.loss.d_loss(logit, torch.tensor([-50.0])).backward()
    assert abs(logit.grad.item()) < 1e-6  # D's optimum on real is 0.9, not 1


def test_ema_batchnorm_statistics_are_those_of_the_averaged_weights():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    ema = EMA(model)
    with torch.no_grad():
        ema.model[0].weight.mul_(3.0)  # the average drifts away from the model's weights
    latents = torch.randn(3, 16, 4).unbind(0)
    ema.recompute_batchnorm((z,) for z in latents)  # G's inputs: (z,) unconditional
    with torch.no_grad():
        activations = torch.cat([ema.model[0](z) for z in latents])
    norm = ema.model[1]
    assert torch.allclose(norm.running_mean, activations.mean(0), atol=1e-5)
    batch_vars = torch.stack([ema.model[0](z).var(0) for z in latents]).mean(0)
    assert torch.allclose(norm.running_var, batch_vars.detach(), atol=1e-4)
    assert not ema.model.training and norm.momentum == 0.1


def test_checkpoint_statistics_use_every_ema_bn_batch_and_the_live_probe_a_few():
    t = trainer(ema_bn_batches=12)
    t.train_step(strips())
    calls = []
    t.ema.model.register_forward_hook(lambda module, inputs, output: calls.append(len(output)))
    t.refresh_ema_batchnorm()  # before a checkpoint: all 12 batches of 8
    assert calls == [8] * 12
    calls.clear()
    t.sample_diversity(n=16)  # every log line: PROBE_BN_BATCHES batches, then the probe
    assert calls == [8] * PROBE_BN_BATCHES + [16]


def test_checkpoints_carry_the_refreshed_ema_statistics(data_root):
    result = train_model(tiny_job(data_root, run="ema-bn"))
    state = load_checkpoint(result["checkpoint"])
    raw_means = {k: v for k, v in state["G"].items() if k.endswith("running_mean")}
    ema_means = {k: v for k, v in state["ema"].items() if k.endswith("running_mean")}
    assert raw_means.keys() == ema_means.keys()
    assert all(not torch.equal(raw_means[k], ema_means[k]) for k in raw_means)
    copied = replace(tiny_job(data_root, run="ema-copied"))
    copied = replace(copied, train=replace(copied.train, ema_bn_batches=0))
    state = load_checkpoint(train_model(copied)["checkpoint"])
    assert all(torch.equal(state["G"][k], state["ema"][k]) for k in raw_means)


def test_resume_is_exact_with_every_option_on(data_root):
    train = replace(
        TINY_TRAIN, diffaugment=ALL, ada_target=0.6, ada_kimg=0.05, r1_gamma=1.0, r1_every=2,
        label_smoothing=0.1, lr_g=1e-4, lr_d=3e-4,
    )  # fmt: skip
    model = replace(TINY_MODEL, spectral_norm=True, d_norm="none", generator="upsample")
    job = tiny_job(data_root, train=train, model=model)
    straight = train_model(replace(job, steps=6, run="all-straight"))
    train_model(replace(job, steps=3, run="all-half"))
    resumed = train_model(replace(job, steps=6, resume="all-half"))
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert torch.equal(a["ada_p"], b["ada_p"]) and 0 < a["ada_p"].item() <= 1
    for part in ("G", "D", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"


HEALTHY = {"real_pos": 0.7, "logit_gap": 1.0, "diversity": 0.3, "real_diversity": 0.4}


def test_health_names_a_beaten_g_and_collapse_and_says_what_to_try():
    assert health_warnings(HEALTHY, BceLoss(), step=500) == []
    beaten = {**HEALTHY, "real_pos": 1.0, "logit_gap": 8.0}
    (warning,) = health_warnings(beaten, BceLoss(), step=500)
    assert warning.startswith("D is overpowering G") and "label_smoothing 0.1" in warning
    assert health_warnings(beaten, make_loss("wgan-gp"), step=500) == []  # no logit scale
    grey = {**HEALTHY, "diversity": 0.02}
    (warning,) = health_warnings(grey, BceLoss(), step=500)
    assert warning.startswith("samples collapsed") and "diffaugment" in warning
    assert health_warnings(grey, BceLoss(), step=40) == []  # every G starts near-uniform


def test_health_advice_leaves_out_what_the_run_already_does():
    smooth_upsample = remedy(TrainConfig(label_smoothing=0.1), ModelConfig(generator="upsample"))
    assert "label_smoothing" not in smooth_upsample and "generator upsample" not in smooth_upsample
    assert "diffaugment" in smooth_upsample and "TTUR" in smooth_upsample
    assert "lower lr_d" not in smooth_upsample  # measured worse: not advice
    assert "TTUR" not in remedy(TrainConfig(lr_g=8e-4), ModelConfig())
    everything = TrainConfig(
        label_smoothing=0.1,
        diffaugment="translation,cutout",
        ada_target=0.6,
        lr_g=1.6e-3,
        lr_d=4e-4,
        beta1=0.0,
        beta2=0.99,
    )
    assert remedy(everything, ModelConfig(generator="upsample")) == DONE


def test_diversity_is_zero_for_identical_samples_and_grows_with_spread():
    same = torch.zeros(1, 3, 8, 8).expand(16, -1, -1, -1)
    assert diversity(same) == 0.0
    spread = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert 0.5 < diversity(spread) < 0.65  # std of U(-1, 1) is 0.577
    nhwc = spread.contiguous(memory_format=torch.channels_last)  # the CPU step's layout
    expected = spread.std(dim=0).mean()
    torch.testing.assert_close(batch_spread(nhwc), expected)


@pytest.mark.slow
def test_the_old_cpu_quickstart_is_flagged_and_says_so_in_stats_and_result(data_root):
    """BCE, width 16, batch 32, transposed G (the grey quickstart of issue 13): within
    120 steps D wins or the samples collapse (here D wins at step 60, the samples collapse
    at 100); every log line carries the health metrics, and the run's result says which
    warning came first and when."""
    old = tiny_job(
        data_root, steps=120, run="old-quickstart",
        loop=LoopConfig(log_every=20, checkpoint_every=1000),
        model=ModelConfig(ngf=16, ndf=16), train=TrainConfig(batch_size=32),
    )  # fmt: skip
    result = train_model(old)
    assert result["health"] and result["seconds"] > 0
    assert set(result["health"]) <= {"D is overpowering G", "samples collapsed"}
    lines = _stats(data_root, "old-quickstart")
    assert {"logit_gap", "real_pos", "diversity", "ada_p", "health", "seconds"} <= set(lines[0])
    flagged = [line["step"] for line in lines if line["health"]]
    assert flagged and flagged[0] == min(result["health"].values())


def _stats(data_root, run: str) -> list[dict]:
    path = DataLayout.at(data_root).runs / run / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]
