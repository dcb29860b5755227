"""DCGAN models: exact pytorch/examples sizes, shapes at both resolutions, init, EMA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan.ema import EMA
from gan.models import (
    GENERATORS,
    RESOLUTIONS,
    Discriminator,
    Generator,
    ModelConfig,
    NearestUpConv,
    build_models,
    weights_init,
)

SMALL = {"nz": 16, "ngf": 8, "ndf": 8}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_sizes_are_pytorch_examples_dcgan():
    generator, discriminator = build_models(ModelConfig())
    assert n_params(generator) == 3_576_704
    assert n_params(discriminator) == 2_765_568


def test_128px_sizes_are_the_documented_ones():
    config = ModelConfig(resolution=128)
    assert n_params(Generator(config)) == 12_786_560
    assert n_params(Discriminator(config)) == 11_164_416


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("kind", GENERATORS)
def test_shapes(resolution, kind):
    config = ModelConfig(resolution=resolution, generator=kind, **SMALL)
    generator, discriminator = build_models(config)
    images = generator(torch.randn(3, config.nz))
    assert images.shape == (3, 3, resolution, resolution)
    assert images.dtype == torch.float32
    assert images.abs().max() <= 1.0
    assert discriminator(images).shape == (3,)
    # the last two stages (64 px: ndf*4, ndf*8; 128 px: ndf*8, ndf*16), pooled to 4x4
    widest = config.ndf * 2 ** (config.stages - 1)
    assert discriminator.features(images).shape == (3, 16 * (widest // 2 + widest))


def test_upsample_generator_has_no_stride_2_transposed_conv():
    generator = Generator(ModelConfig(generator="upsample", **SMALL))
    transposed = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.stride for m in transposed] == [(1, 1)]  # only the 1x1 -> 4x4 projection
    assert sum(isinstance(m, NearestUpConv) for m in generator.modules()) == 4


@pytest.mark.parametrize(("cin", "cout", "size"), [(16, 3, 32), (8, 5, 4), (4, 4, 1)])
def test_nearest_up_conv_is_nearest_upsampling_then_a_3x3_conv(cin, cout, size):
    """The sub-pixel form gives the composite's output and gradients, borders included."""
    layer = NearestUpConv(cin, cout)
    x = torch.randn(2, cin, size, size + 3, requires_grad=True)
    plain = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), layer.weight, padding=1)
    folded = layer(x)
    assert folded.shape == (2, cout, 2 * size, 2 * size + 6)
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, (x, layer.weight), grad)
    folded_grads = torch.autograd.grad(folded, (x, layer.weight), grad)
    torch.testing.assert_close(folded_grads, expected, rtol=1e-3, atol=1e-3)  # sums of ~10^4 terms


def test_generator_loads_checkpoints_that_held_upsample_stages_as_sequentials():
    config = ModelConfig(generator="upsample", **SMALL)
    generator = Generator(config)
    legacy = dict(generator.state_dict())  # as saved when a stage was Sequential(Upsample, Conv2d)
    for name, module in generator.named_modules():
        if isinstance(module, NearestUpConv):
            legacy[f"{name}.1.weight"] = legacy.pop(f"{name}.weight")
    assert len(set(legacy) - set(generator.state_dict())) == 4  # the four upsample stages
    restored = Generator(config)
    restored.load_state_dict(legacy)
    z = torch.randn(2, config.nz)
    torch.testing.assert_close(restored.eval()(z), generator.eval()(z))


def test_discriminator_has_no_norm_on_its_first_stage_and_none_in_layer_mode():
    batch = Discriminator(ModelConfig(**SMALL))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in batch.stages[0].modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == 3
    layer = Discriminator(ModelConfig(d_norm="layer", **SMALL))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in layer.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in layer.modules()) == 3


def test_channels_last_gives_the_same_logits():
    generator, discriminator = build_models(ModelConfig(**SMALL))
    discriminator.eval()
    images = generator(torch.randn(2, SMALL["nz"])).detach()
    expected = discriminator(images)
    discriminator.to(memory_format=torch.channels_last)
    got = discriminator(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_weights_init_is_dcgan_normal():
    generator, discriminator = build_models(ModelConfig())
    modules = [*generator.modules(), *discriminator.modules()]
    convs = torch.cat(
        [m.weight.flatten() for m in modules if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    )
    norms = [m for m in modules if isinstance(m, nn.BatchNorm2d)]
    gammas = torch.cat([m.weight for m in norms])
    assert abs(convs.mean().item()) < 1e-3 and abs(convs.std().item() - 0.02) < 1e-3
    assert abs(gammas.mean().item() - 1.0) < 5e-3 and abs(gammas.std().item() - 0.02) < 5e-3
    assert all(torch.all(m.bias == 0) for m in norms)


def test_weights_init_leaves_other_modules_alone():
    linear = nn.Linear(4, 4)
    before = linear.weight.clone()
    weights_init(linear)
    assert torch.equal(linear.weight, before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 96}, "resolution must be 64 or 128, got 96"),
        ({"nz": 0}, "nz must be a positive integer, got 0"),
        ({"generator": "pixelshuffle"}, "generator must be transposed or upsample"),
        ({"d_norm": "spectral"}, "d_norm must be batch, layer or none"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_config_as_dict_round_trips():
    config = ModelConfig(resolution=128, generator="upsample", d_norm="layer")
    assert ModelConfig(**config.as_dict()) == config


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_moves_towards_the_model_and_copies_buffers():
    model = _tiny_model()
    ema = EMA(model, beta=0.9)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model, ema.decay(1000))  # warmed up: the decay is beta
    for averaged, old in zip(ema.model.parameters(), start):
        assert torch.allclose(averaged, old + 0.1)  # (1 - beta) of the way to +1
    assert torch.equal(ema.model[1].running_mean, torch.full((4,), 5.0))
    assert ema.model[1].num_batches_tracked.item() == 7


def test_ema_warms_up_so_a_short_run_is_not_averaged_with_its_random_start():
    model = _tiny_model()
    ema = EMA(model, beta=0.999)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, torch.tensor(ema.decay(0)))  # 1/10 (a device tensor, as graphs need)
    for averaged, old in zip(ema.model.parameters(), start):
        assert torch.allclose(averaged, old + 0.9)
    assert ema.decay(0) == 0.1 and math.isclose(ema.decay(90), 0.91)
    assert ema.decay(10**6) == 0.999  # then the configured beta


def test_ema_model_is_a_frozen_eval_copy_and_state_round_trips():
    model = _tiny_model()
    ema = EMA(model)
    assert not ema.model.training
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the original is untouched
    other = EMA(_tiny_model())
    other.load_state_dict(ema.state_dict())
    for a, b in zip(other.model.state_dict().values(), ema.model.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_of_identical_weights_stays_put():
    model = _tiny_model()
    ema = EMA(model, beta=0.5)
    ema.update(model, ema.decay(0))
    for a, b in zip(ema.model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert math.isclose(ema.beta, 0.5)


CITIES = ("austin", "paris", "tokyo")


def test_conditional_models_add_only_the_class_embeddings():
    config = ModelConfig(conditional="city", classes=CITIES)
    generator, discriminator = build_models(config)
    # G: each BatchNorm's 2C affine parameters become 2C per class (C = 512+256+128+64);
    # D: one embedding of its last width (512) per class, for the projection.
    assert n_params(generator) == 3_576_704 + 2 * 960 * (len(CITIES) - 1)
    assert n_params(discriminator) == 2_765_568 + 512 * len(CITIES)
    assert ModelConfig(classes=CITIES).n_classes == 0  # unconditional: the paper's models
    assert n_params(build_models(ModelConfig(classes=CITIES))[0]) == 3_576_704


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("kind", GENERATORS)
def test_conditional_shapes_and_labels_matter(resolution, kind):
    torch.manual_seed(0)
    config = ModelConfig(
        resolution=resolution, generator=kind, conditional="city", classes=CITIES, **SMALL
    )
    generator, discriminator = build_models(config)
    generator.eval()
    discriminator.eval()
    z = torch.randn(3, config.nz).repeat(2, 1)
    labels = torch.tensor([0, 1, 2, 2, 0, 1])
    images = generator(z, labels)
    assert images.shape == (6, 3, resolution, resolution)
    # Relative comparisons: in eval mode a fresh DCGAN init shrinks activations layer by
    # layer (at 128 px the tiny D's logits are ~1e-9), so absolute tolerances see zeros.
    assert not torch.allclose(images[:3], images[3:], rtol=1e-3, atol=0)  # other city
    logits = discriminator(images, labels)
    assert logits.shape == (6,)
    other = discriminator(images, labels.roll(1))
    assert not torch.allclose(logits, other, rtol=1e-3, atol=0)


def test_conditional_models_demand_labels_and_unconditional_ones_refuse_them():
    conditional = ModelConfig(conditional="city", classes=CITIES, **SMALL)
    generator, _ = build_models(conditional)
    with pytest.raises(ValueError, match="conditional on 3 classes: pass labels"):
        generator(torch.randn(2, SMALL["nz"]))
    plain_g, _ = build_models(ModelConfig(**SMALL))
    with pytest.raises(ValueError, match="unconditional"):
        plain_g(torch.randn(2, SMALL["nz"]), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="needs its classes"):
        build_models(ModelConfig(conditional="city"))
    with pytest.raises(ValueError, match="conditional must be"):
        ModelConfig(conditional="weather")


def test_conditional_spectral_norm_covers_the_projection():
    config = ModelConfig(conditional="city", classes=CITIES, spectral_norm=True, **SMALL)
    _, discriminator = build_models(config)
    assert hasattr(discriminator.embed, "parametrizations")


def test_ema_batchnorm_refresh_takes_labels():
    config = ModelConfig(conditional="city", classes=CITIES, **SMALL)
    generator, _ = build_models(config)
    ema = EMA(generator)
    z, labels = torch.randn(8, SMALL["nz"]), torch.arange(8) % 3
    ema.recompute_batchnorm([(z, labels)])
    norm = ema.model.main[1].norm
    assert norm.num_batches_tracked == 1 and not torch.equal(norm.running_var, torch.ones(64))
