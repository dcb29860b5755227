"""GAN objectives on known inputs, the gradient penalty, and one real CPU step per loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gan.accelerators import resolve_accelerator
from gan.losses import LOSSES, gradient_penalty, make_loss
from gan.models import ModelConfig, build_models


def test_registry_names():
    assert list(LOSSES) == ["bce", "hinge", "wgan-gp"]
    assert [make_loss(name).needs_gp for name in LOSSES] == [False, False, True]


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown loss 'lsgan': choose one of bce, hinge, wgan-gp"
    ):
        make_loss("lsgan")


def test_label_smoothing_is_bce_only():
    with pytest.raises(ValueError, match="label_smoothing applies to the bce loss only"):
        make_loss("hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        make_loss("bce", label_smoothing=1.0)


def test_bce_at_zero_logits_is_two_ln2():
    zeros = torch.zeros(8)
    loss = make_loss("bce")
    assert math.isclose(loss.d_loss(zeros, zeros).item(), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(loss.g_loss(zeros).item(), math.log(2), rel_tol=1e-6)


def test_bce_generator_loss_falls_as_fake_logits_rise():
    loss = make_loss("bce")
    values = [loss.g_loss(torch.full((4,), x)).item() for x in (-4.0, -1.0, 0.0, 1.0, 4.0)]
    assert values == sorted(values, reverse=True)
    assert values[0] > 4.0  # non-saturating: a confident D still gives G a strong signal


def test_label_smoothing_moves_the_real_target_to_1_minus_s():
    smoothed = make_loss("bce", label_smoothing=0.1)
    fake = torch.zeros(1)
    # the real term is minimal where sigmoid(real) = 0.9, not at +infinity
    real = torch.full((1,), math.log(0.9 / 0.1), requires_grad=True)
    smoothed.d_loss(real, fake).backward()
    assert abs(real.grad.item()) < 1e-6
    big = torch.full((1,), 8.0)
    assert smoothed.d_loss(big, fake) > make_loss("bce").d_loss(big, fake)


def test_hinge_on_known_values():
    loss = make_loss("hinge")
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5; fake: relu(1 - 2) = 0, relu(1 + 0) = 1
    assert math.isclose(loss.d_loss(real, fake).item(), 0.25 + 0.5)
    assert math.isclose(loss.g_loss(fake).item(), 1.0)


def test_wasserstein_on_known_values():
    loss = make_loss("wgan-gp")
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([-1.0, 0.0])
    assert math.isclose(loss.d_loss(real, fake).item(), -0.5 - 2.0)
    assert math.isclose(loss.g_loss(fake).item(), 0.5)


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere, so its norm is ||w||."""

    def __init__(self, norm: float) -> None:
        super().__init__()
        w = torch.randn(3, 8, 8)
        self.w = nn.Parameter(w * norm / w.norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_vanishes_for_a_1_lipschitz_linear_critic():
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    assert gradient_penalty(LinearCritic(1.0), real, fake).item() < 1e-8


def test_gradient_penalty_is_positive_otherwise_and_reaches_the_weights():
    critic = LinearCritic(3.0)
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    penalty = gradient_penalty(critic, real, fake, weight=10.0)
    assert math.isclose(penalty.item(), 10.0 * (3.0 - 1.0) ** 2, rel_tol=1e-4)
    penalty.backward()  # create_graph=True: the penalty trains the critic
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0


def test_gradient_penalty_runs_in_fp32_for_bf16_inputs():
    real = torch.randn(2, 3, 8, 8).bfloat16()
    fake = torch.randn(2, 3, 8, 8).bfloat16()
    assert gradient_penalty(LinearCritic(2.0), real, fake).dtype == torch.float32


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_training_step_on_cpu(name):
    """The trainer's two updates, written out: loss finite, every weight moves."""
    torch.manual_seed(0)
    d_norm = "layer" if name == "wgan-gp" else "batch"
    config = ModelConfig(nz=16, ngf=8, ndf=8, d_norm=d_norm)
    acc = resolve_accelerator("cpu")
    generator, discriminator = build_models(config)
    generator.to(memory_format=torch.channels_last)
    discriminator.to(memory_format=torch.channels_last)
    opt_g = acc.optimizer(generator.parameters(), 2e-4, (0.5, 0.999))
    opt_d = acc.optimizer(discriminator.parameters(), 2e-4, (0.5, 0.999))
    loss = make_loss(name, label_smoothing=0.1 if name == "bce" else 0.0)
    before = [p.detach().clone() for p in [*generator.parameters(), *discriminator.parameters()]]
    real = (torch.rand(4, 3, 64, 64) * 2 - 1).contiguous(memory_format=torch.channels_last)

    with acc.autocast():
        fake = generator(torch.randn(4, config.nz))
        err_d = loss.d_loss(discriminator(real).float(), discriminator(fake.detach()).float())
    if loss.needs_gp:
        err_d = err_d + gradient_penalty(discriminator, real, fake.detach())
    opt_d.zero_grad(set_to_none=True)
    err_d.backward()
    opt_d.step()
    with acc.autocast():
        err_g = loss.g_loss(discriminator(fake).float())
    opt_g.zero_grad(set_to_none=True)
    err_g.backward()
    opt_g.step()

    assert torch.isfinite(err_d) and torch.isfinite(err_g)
    after = [*generator.parameters(), *discriminator.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))
