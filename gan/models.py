"""DCGAN generator and discriminator, as in Radford et al. and pytorch/examples.

At 64 px with nz=100 and ngf=ndf=64 the parameter counts are exactly those of
pytorch/examples/dcgan (G 3,576,704, D 2,765,568). D returns logits: a final Sigmoid
with BCELoss is unsafe under autocast, BCE-with-logits is not.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn

GENERATORS = ("transposed", "upsample")
D_NORMS = ("batch", "layer", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; saved with every checkpoint and re-applied on load."""

    resolution: int = 64  # 64 or 128
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    generator: str = "transposed"  # transposed | upsample (nearest + conv: no checkerboard)
    d_norm: str = "batch"  # batch | layer | none (WGAN-GP's penalty is per sample: no BatchNorm)

    def __post_init__(self) -> None:
        if self.resolution not in (64, 128):
            raise ValueError(f"resolution must be 64 or 128, got {self.resolution}")
        if min(self.nz, self.ngf, self.ndf) < 1:
            raise ValueError("nz, ngf and ndf must be >= 1")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {self.generator!r}")
        if self.d_norm not in D_NORMS:
            raise ValueError(f"d_norm must be one of {D_NORMS}, got {self.d_norm!r}")

    @property
    def stages(self) -> int:
        """Stride-2 stages between 4x4 and the output: 4 at 64 px, 5 at 128 px."""
        return 4 if self.resolution == 64 else 5

    def as_dict(self) -> dict:
        return asdict(self)


def _up(cin: int, cout: int, kind: str) -> nn.Module:
    """Double the spatial size: a 4x4 stride-2 transposed conv, or nearest + 3x3 conv."""
    if kind == "transposed":
        return nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
    )


def _d_norm(channels: int, kind: str) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # layer norm over (C, H, W) of each sample
    return nn.Identity()


class Generator(nn.Module):
    """z [B, nz] -> image [B, 3, R, R] in [-1, 1].

    64 px: nz -> 4x4x(ngf*8) -> 8x8x(ngf*4) -> 16x16x(ngf*2) -> 32x32xngf -> 64x64x3.
    128 px starts at ngf*16 and has one more stage.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.nz = config.nz
        widths = [config.ngf * 2**i for i in reversed(range(config.stages))]  # e.g. 512..64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.nz, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in itertools.pairwise(widths):
            layers += [_up(cin, cout, config.generator), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [_up(widths[-1], 3, config.generator), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    """image [B, 3, R, R] -> logits [B].

    64 px: 64x64x3 -> 32x32xndf -> 16x16x(ndf*2) -> 8x8x(ndf*4) -> 4x4x(ndf*8) -> 1.
    No normalisation on the first layer (as in the paper).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = [config.ndf * 2**i for i in range(config.stages)]  # e.g. 64..512
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
        ]
        for cin, cout in itertools.pairwise(widths):
            layers += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                _d_norm(cout, config.d_norm),
                nn.LeakyReLU(0.2, True),
            ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).flatten()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, F]: the last stage's 4x4 maps, flattened (the DCGAN paper's probe input)."""
        return self.body(x).float().flatten(1)


def weights_init(module: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); norm weights N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_models(config: ModelConfig) -> tuple[Generator, Discriminator]:
    generator, discriminator = Generator(config), Discriminator(config)
    generator.apply(weights_init)
    discriminator.apply(weights_init)
    return generator, discriminator
