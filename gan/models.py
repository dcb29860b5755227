"""DCGAN generator and discriminator, as in Radford et al. (2015) and pytorch/examples.

At 64 px with nz=100 and ngf=ndf=64 the layer stacks and parameter counts are exactly
those of pytorch/examples/dcgan/main.py (G 3,576,704, D 2,765,568; every conv has
bias=False, as there: a following BatchNorm makes a bias redundant).

Where this differs from pytorch/examples, on purpose:
- D returns logits [B]: Sigmoid + BCELoss is unsafe under autocast, BCE-with-logits is not.
- One rule builds both resolutions: channels halve each time the resolution doubles.
  At 128 px G therefore starts at ngf*16 (4x4x1024) and D ends at ndf*16, one stage
  more than at 64 px (G 12,786,560 / D 11,164,416 parameters at the defaults).
- spectral_norm=True wraps each of D's convs in a spectral-norm parametrisation (power
  iteration buffers only: the parameter counts stay those above).
- generator="upsample" swaps each stride-2 transposed conv for nearest x2 + 3x3 conv:
  fewer weights (G 2,371,136 at 64 px), no checkerboard artefacts. It is computed as
  the equivalent sub-pixel conv (NearestUpConv), so the x2 image is never built.
- conditional="city" makes both models class-conditional on the sample's city (labels
  int64 [B], positions in `classes`, dataset.json's city list; "city,night" doubles the
  classes into each city by day and by night, shards/conditions.py): each of G's BatchNorms
  takes its gain and bias from a per-class embedding (conditional BatchNorm, de Vries et
  al. 2017; Miyato & Koyama 2018), and D adds the projection <embed(y), sum-pooled last
  features> to its logit (projection discriminator, Miyato & Koyama 2018). With K classes
  G has 1,920 * (K - 1) and D 512 * K parameters more than the paper's at 64 px.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from shards.conditions import CONDITIONS
from shards.geometry import RESOLUTIONS
from shards.options import option

GENERATORS = ("transposed", "upsample")
D_NORMS = ("batch", "layer", "none")
FEATURE_GRID = 4  # D.features pools each of the last two stages to 4x4, as the paper's probe


@dataclass(frozen=True)
class ModelConfig:
    """The architecture; saved with every checkpoint and re-applied on load."""

    resolution: int = 64  # 64 or 128 px, square: the dataset's, never set by hand
    nz: int = option(100, "Latent size.")
    ngf: int = option(64, "G width: channels of its last hidden stage (the paper's 64).")
    ndf: int = option(64, "D width: channels of its first stage (the paper's 64).")
    generator: str = option(
        "transposed", "G's upsampling: stride-2 transposed convs (the paper's), or nearest "
        "x2 + 3x3 conv (no checkerboard).", choices=GENERATORS)  # fmt: skip
    d_norm: str = option("batch", "D's normalisation (WGAN-GP's per-sample penalty needs "
                         "layer or none).", choices=D_NORMS)  # fmt: skip
    spectral_norm: bool = option(
        False,
        "Spectral normalisation of every D weight (Miyato et al. 2018): a 1-Lipschitz D "
        "that cannot run away from G; usually with d_norm none and the hinge loss.",
    )
    conditional: str = option(
        "",
        "Condition on the city (city,night: and on day or night): a class-conditional G "
        "(conditional BatchNorm) and a projection D (Miyato & Koyama 2018), sampled by "
        "city name; empty: unconditional.",
        choices=CONDITIONS,
    )
    # The condition vocabulary (shards/conditions.py): the dataset's city names in
    # dataset.json order, with a night variant each under city,night (a label is a
    # position in it). Set from the data at train time, saved with the checkpoint.
    classes: tuple[str, ...] = ()
    untrained: tuple[str, ...] = ()  # classes without train images (sampling refuses them)

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be 64 or 128, got {self.resolution}")
        for name in ("nz", "ngf", "ndf"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be transposed or upsample, got {self.generator!r}")
        if self.d_norm not in D_NORMS:
            raise ValueError(f"d_norm must be batch, layer or none, got {self.d_norm!r}")
        if self.conditional not in CONDITIONS:
            choices = ", ".join(repr(c) for c in CONDITIONS)
            raise ValueError(f"conditional must be one of {choices}, got {self.conditional!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "untrained", tuple(self.untrained))

    @property
    def n_classes(self) -> int:
        """Classes G and D are conditioned on; 0 for the unconditional models."""
        return len(self.classes) if self.conditional else 0

    @property
    def stages(self) -> int:
        """Stride-2 stages between 4x4 and the image: 4 at 64 px, 5 at 128 px."""
        return RESOLUTIONS.index(self.resolution) + 4

    def as_dict(self) -> dict:
        return asdict(self)


def _up(cin: int, cout: int, kind: str) -> nn.Module:
    """Double the spatial size: 4x4 stride-2 transposed conv, or nearest x2 + 3x3 conv.

    Nearest + conv gives every output pixel the same number of kernel taps, so it
    cannot draw the checkerboard that overlapping transposed-conv strides leave.
    """
    if kind == "transposed":
        return nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    return NearestUpConv(cin, cout)


def _phase_taps() -> torch.Tensor:
    """0/1 float [2, 2, 3, 3, 3, 3]: taps[i, j, r, s, dy, dx] = 1 where tap (dy, dx) of a
    3x3 kernel over the nearest-x2 image reads pixel (r - 1, s - 1) of the original,
    relative to the output's source pixel, for the output pixel of phase (i, j)."""
    taps = torch.zeros(2, 2, 3, 3, 3, 3)
    for i, j, dy, dx in itertools.product(range(2), range(2), range(3), range(3)):
        taps[i, j, (i + dy - 1) // 2 + 1, (j + dx - 1) // 2 + 1, dy, dx] = 1.0
    return taps


class NearestUpConv(nn.Conv2d):
    """Nearest x2 upsampling then a 3x3 conv (padding 1, no bias): [B, cin, H, W] ->
    [B, cout, 2H, 2W], computed without the upsampled image.

    Each of the four output phases (even/odd row and column) of that composite is a
    3x3 conv of the original image with the taps folded together, so one conv to
    4 * cout channels at H x W followed by pixel_shuffle (the sub-pixel convolution of
    Shi et al. 2016) gives the same output to float rounding. The upsampled image is
    never built or kept for backward: measured on 2 CPU cores at width 16, a cpu-preset
    step takes 0.86-0.92x the time (benchmarks/step.py). The weight is the plain conv's
    [cout, cin, 3, 3], so initialisation and checkpoints are unchanged.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, 1, 1, bias=False)
        self.register_buffer("taps", _phase_taps(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        folded = torch.einsum("ijrsde,ocde->oijcrs", self.taps.to(self.weight), self.weight)
        weight = folded.reshape(4 * self.out_channels, self.in_channels, 3, 3)
        return F.pixel_shuffle(F.conv2d(x, weight.to(x.dtype), padding=1), 2)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Checkpoints before this module held the stage as Sequential(Upsample, Conv2d).
        legacy = f"{prefix}1.weight"
        if legacy in state_dict:
            state_dict[f"{prefix}weight"] = state_dict.pop(legacy)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _norm(channels: int, kind: str) -> nn.Module:
    """D's normalisation. "layer" is LayerNorm over (C, H, W) of each sample: GroupNorm(1, C)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are looked up per class: x [B, C, H, W], y int64 [B],
    or float [B, K] class weights, which mix the classes' gains and biases (how a walk
    from one city to another morphs the same latent: Miyato & Koyama 2018, fig. 6).

    The statistics are shared by all classes (one BatchNorm without affine); only the
    affine part depends on the label, so a class costs 2C parameters per layer. Gains
    start at N(1, 0.02) and biases at 0, as weights_init starts a plain BatchNorm.
    """

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.embed = nn.Embedding(classes, 2 * channels)
        nn.init.normal_(self.embed.weight[:, :channels], 1.0, 0.02)
        nn.init.zeros_(self.embed.weight[:, channels:])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        affine = y.float() @ self.embed.weight if y.is_floating_point() else self.embed(y)
        gain, bias = affine.to(x.dtype)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * gain + bias


def _check_labels(y: torch.Tensor | None, classes: int, model: str) -> None:
    if classes and y is None:
        raise ValueError(f"this {model} is conditional on {classes} classes: pass labels y")
    if not classes and y is not None:
        raise ValueError(f"this {model} is unconditional: labels y cannot be used")


class Generator(nn.Module):
    """z float [B, nz] (and, if conditional, labels int64 [B] or class weights float
    [B, K]) -> images float [B, 3, R, R] in [-1, 1].

    64 px (ngf=64): nz -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3.
    128 px starts at 4x4x(ngf*16) and has one more stage.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.nz, self.classes = config.nz, config.n_classes
        self.condition = config.conditional  # what a label means: shards/conditions.py
        widths = [config.ngf * 2**i for i in reversed(range(config.stages))]  # 512 .. 64

        def norm(channels: int) -> nn.Module:
            if self.classes:
                return ConditionalBatchNorm2d(channels, self.classes)
            return nn.BatchNorm2d(channels)

        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.nz, widths[0], 4, 1, 0, bias=False),  # 1x1 -> 4x4
            norm(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in itertools.pairwise(widths):
            layers += [_up(cin, cout, config.generator), norm(cout), nn.ReLU(True)]
        layers += [_up(widths[-1], 3, config.generator), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(y, self.classes, "generator")
        x = z.reshape(z.shape[0], self.nz, 1, 1)
        for layer in self.main:
            x = layer(x, y) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x


class Discriminator(nn.Module):
    """images float [B, 3, R, R] (and labels int64 [B] if conditional) -> logits float [B]
    (no Sigmoid).

    64 px (ndf=64): 64x64x3 -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> 1.
    Each stage is conv 4x4 stride 2, norm, LeakyReLU(0.2); the first has no norm
    (as in the paper). 128 px has one more stage, ending at 4x4x(ndf*16). A conditional
    D adds the projection term <embed(y), h> with h the last stage summed over space.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = [config.ndf * 2**i for i in range(config.stages)]  # 64 .. 512
        first = nn.Sequential(nn.Conv2d(3, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        self.stages = nn.ModuleList([first])
        for cin, cout in itertools.pairwise(widths):
            self.stages.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                    _norm(cout, config.d_norm),
                    nn.LeakyReLU(0.2, True),
                )
            )
        self.head = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)  # 4x4 -> 1x1
        self.classes = config.n_classes
        self.embed = nn.Embedding(self.classes, widths[-1]) if self.classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(y, self.classes, "discriminator")
        for stage in self.stages:
            x = stage(x)
        logits = self.head(x).flatten()
        if self.embed is None:
            return logits
        projection = (self.embed(y) * x.float().sum(dim=(2, 3))).sum(dim=1)
        return logits + projection.to(logits.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """images [B, 3, R, R] -> float32 [B, F]: the input to a linear probe.

        The last two stages' activations, each max-pooled to a 4x4 grid (the DCGAN
        paper's probe pooled every layer that way), flattened and concatenated:
        F = 16 * (ndf*4 + ndf*8) = 12,288 at 64 px, 16 * (ndf*8 + ndf*16) = 24,576 at
        128 px. Call `D.eval()` first so BatchNorm uses its running statistics, and
        wrap in torch.no_grad() unless gradients are wanted.
        """
        pooled = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= len(self.stages) - 2:
                pooled.append(F.adaptive_max_pool2d(x, FEATURE_GRID).flatten(1))
        return torch.cat(pooled, dim=1).float()


def weights_init(module: nn.Module) -> None:
    """DCGAN init (pytorch/examples): conv weights N(0, 0.02); norm weights N(1, 0.02), bias 0;
    D's class embedding N(0, 0.02) (a conditional BatchNorm initialises itself).

    Use as `model.apply(weights_init)`.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, Discriminator) and module.embed is not None:
        nn.init.normal_(module.embed.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_models(config: ModelConfig) -> tuple[Generator, Discriminator]:
    """G and D for `config`, DCGAN-initialised, on the CPU in fp32.

    Spectral norm is applied after the init: it divides whatever weights D starts
    with by their largest singular value, so the N(0, 0.02) draw still sets directions.
    It covers the projection embedding too, as in Miyato & Koyama's code.
    """
    if config.conditional and not config.classes:
        raise ValueError("a conditional model needs its classes (the dataset's city names)")
    generator, discriminator = Generator(config), Discriminator(config)
    generator.apply(weights_init)
    discriminator.apply(weights_init)
    if config.spectral_norm:
        for module in discriminator.modules():
            if isinstance(module, nn.Conv2d | nn.Embedding):
                spectral_norm(module)
    return generator, discriminator
