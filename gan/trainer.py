"""The GAN training step and everything a checkpoint must hold to resume it exactly.

`Trainer.train_step` is the pytorch/examples DCGAN iteration written out plainly:
update D on a real batch and on G's fakes (separate forwards, so BatchNorm sees each
alone), then update G through the just-updated D, then the EMA of G. Every D call,
G's included, sees its images through DiffAugment when a policy is set; the optional
R1 penalty and ADA's probability ride on the D update. Metrics stay on
the device; the loop reads them every `log_every` steps, so there is no host sync per
step to starve the accelerator. A conditional model (ModelConfig.conditional) sees the
real batch's city labels in D's real call and generates its fakes for the same labels,
so fakes follow the (city-balanced) class mix the loader draws.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from gan.accelerators import Accelerator
from gan.augment import AdaptiveStrength, diff_augment, parse_policy, random_window
from gan.distributed import World, all_mean, average_gradients, broadcast_module
from gan.ema import EMA
from gan.graphed import GraphedStep
from gan.health import batch_spread, diversity
from gan.losses import LOSSES, gradient_penalty, make_loss, r1_penalty
from gan.models import ModelConfig, build_models
from shards.options import option
from shards.rng import set_state

# Objectives whose logits' sign is D's verdict (ADA's r_t needs one): not a WGAN critic.
SIGNED_LOSSES = tuple(name for name, loss in LOSSES.items() if loss.saturated_gap > 0)
PROBE_BN_BATCHES = 4  # the live diversity probe's BatchNorm refresh: cheap, every log line
# Per-step device metrics, averaged over each log interval. The loop adds `diversity`
# and a `health` list of warnings (gan/health.py); the report reads them from stats.jsonl.
METRICS = (
    "loss_d",
    "loss_g",
    "d_real",  # mean D logit on real images
    "d_fake",  # mean D logit on G's images
    "logit_gap",  # d_real - d_fake: how far D separates them
    "real_pos",  # share of real logits > 0, in [0, 1] (ADA's r_t = 2 * real_pos - 1)
    "ada_p",  # the augmentation probability (1 for plain DiffAugment, 0 with none)
    "real_diversity",  # mean per-pixel std across the real batch: `diversity`'s yardstick
)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (DCGAN defaults). A step is one generator update."""

    batch_size: int = option(128, "Images per D step, per process.")
    lr_g: float = option(2e-4, "Adam learning rate of G (TTUR: may differ from lr_d).")
    lr_d: float = option(2e-4, "Adam learning rate of D (TTUR, Heusel et al. 2017).")
    beta1: float = option(0.5, "Adam beta1 of both optimisers (the DCGAN paper's 0.5).")
    beta2: float = option(0.999, "Adam beta2 of both optimisers.")
    loss: str = option("bce", "GAN objective; bce is non-saturating.", choices=tuple(LOSSES))
    label_smoothing: float = option(0.0, "One-sided: D's real target is 1 - s (bce only).")
    d_steps: int = option(0, "D updates per G update; 0 = 5 for wgan-gp, else 1.")
    gp_weight: float = option(10.0, "WGAN-GP penalty weight (wgan-gp only).")
    r1_gamma: float = option(
        0.0, "R1 penalty weight on D's gradient at real images (Mescheder et al. 2018); 0: off."
    )
    r1_every: int = option(16, "Lazy R1: apply it every k D steps, weighted by k (StyleGAN2).")
    diffaugment: str = option(
        "",
        "DiffAugment policy (Zhao et al. 2020): comma-separated subset of "
        "color,translation,cutout, applied to real and fake before every D call; empty: off.",
    )
    ada_target: float = option(
        0.0,
        "ADA (Karras et al. 2020): target of r_t = E[sign(D(real))] that drives the "
        "probability of each DiffAugment transform; 0: always applied.",
    )
    ada_kimg: float = option(10.0, "ADA speed: thousands of real images for p to go 0 -> 1.")
    ema_beta: float = option(
        0.999,
        "Final decay of G's EMA; it warms up as (1 + step) / (10 + step), so 0.999 is "
        "reached only after 8,991 steps (a shorter run never uses this value).",
    )
    ema_bn_batches: int = option(
        64,
        "No-grad batches that recompute the EMA G's BatchNorm statistics before each "
        f"checkpoint (the live health probe uses at most {PROBE_BN_BATCHES}); 0: copy G's.",
    )
    flip: bool = option(True, "Random horizontal flips of the real windows.")
    seed: int = option(0, "Training seed: weights, noise, data order. Not the split seed.")
    cuda_graph: bool = option(
        True,
        "On CUDA, capture the whole step in one CUDA graph (one process; not with R1, "
        "WGAN-GP or compile); eager after one warning where capture fails.",
    )
    compile: str = option("", "torch.compile backend for G and D, e.g. inductor; empty: eager. "
                          "A backend that fails falls back to eager with a warning.")  # fmt: skip

    def __post_init__(self) -> None:
        rules = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr_g > 0 and self.lr_d > 0, "learning rates lr_g and lr_d must be > 0"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)"),
            (0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)"),
            (self.d_steps >= 0, f"d_steps must be >= 0 (0: auto), got {self.d_steps}"),
            (self.r1_gamma >= 0, f"r1_gamma must be >= 0, got {self.r1_gamma}"),
            (self.r1_every >= 1, f"r1_every must be >= 1, got {self.r1_every}"),
            (0 <= self.ada_target < 1, f"ada_target must be in [0, 1), got {self.ada_target}"),
            (self.ada_kimg > 0, f"ada_kimg must be > 0, got {self.ada_kimg}"),
            (not self.ada_target or self.diffaugment, "ada_target needs a diffaugment policy"),
            (
                not self.ada_target or self.loss in SIGNED_LOSSES or self.loss not in LOSSES,
                f"ada_target needs logits whose sign is D's verdict, not {self.loss}'s critic "
                f"values (no fixed zero): use {' or '.join(SIGNED_LOSSES)}",
            ),
            (0 <= self.ema_beta < 1, f"ema_beta must be in [0, 1), got {self.ema_beta}"),
            (self.ema_bn_batches >= 0, "ema_bn_batches must be >= 0"),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)
        make_loss(self.loss, self.label_smoothing)  # bad names or combinations fail here
        parse_policy(self.diffaugment)

    @property
    def critic_steps(self) -> int:
        """D updates per G update: `d_steps`, or where it is 0 (auto) what the objective
        needs (WGAN-GP's 5, Gulrajani et al. 2017; else 1). Resolved here, not stored, so
        `dataclasses.replace(config, loss=...)` re-derives it."""
        return self.d_steps or (5 if self.loss == "wgan-gp" else 1)

    def as_dict(self) -> dict:
        return asdict(self)


class Trainer:
    """G, D, their optimizers, the EMA generator and the random streams of one run."""

    def __init__(
        self,
        config: TrainConfig,
        models: ModelConfig,
        accelerator: Accelerator,
        world: World = World(),
    ) -> None:
        self.config, self.model_config, self.acc, self.world = config, models, accelerator, world
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        generator, discriminator = build_models(models)
        memory_format = (
            torch.channels_last if accelerator.channels_last else torch.contiguous_format
        )
        self.G = generator.to(accelerator.device, memory_format=memory_format)
        self.D = discriminator.to(accelerator.device, memory_format=memory_format)
        broadcast_module(self.G)
        broadcast_module(self.D)
        # What the steps call: compiled modules sharing G's and D's parameters, or G and D.
        self.g_forward, self.d_forward = _compiled(self.G, self.D, config.compile, accelerator)
        self.memory_format = memory_format
        self.loss = make_loss(config.loss, config.label_smoothing)
        graph = graph_plan(config, accelerator, world, self.loss.needs_gp)
        betas = (config.beta1, config.beta2)
        self.opt_g = accelerator.optimizer(self.G.parameters(), config.lr_g, betas, graph)
        self.opt_d = accelerator.optimizer(self.D.parameters(), config.lr_d, betas, graph)
        self.ema = EMA(self.G, beta=config.ema_beta)
        self.ema_decay = torch.zeros((), device=accelerator.device)  # filled before each step
        self.policy = parse_policy(config.diffaugment)
        self.ada = AdaptiveStrength(
            config.ada_target, config.ada_kimg, accelerator.device, augmenting=bool(self.policy)
        )
        self.rng = torch.Generator(device=accelerator.device)
        self.rng.manual_seed(config.seed * 7919 + world.rank)  # distinct noise per rank
        self.graphed = GraphedStep(self._step, self._step_state, [self.rng]) if graph else None
        self.step = 0
        self.seconds = 0.0  # training time of all steps so far (the loop's clock)
        self.health: dict[str, int] = {}  # each kind of health warning -> step first seen

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.model_config.nz, device=self.acc.device, generator=self.rng)

    def fixed_noise(self, n: int, stream: int) -> torch.Tensor:
        """The same latents at every call (and on every rank), from their own stream, so
        health checks and BatchNorm refreshes never move the training noise."""
        rng = torch.Generator(device=self.acc.device).manual_seed(self.config.seed + stream)
        return torch.randn(n, self.model_config.nz, device=self.acc.device, generator=rng)

    def fixed_inputs(self, n: int, stream: int) -> tuple[torch.Tensor, ...]:
        """G's inputs for `fixed_noise(n, stream)`: (z,), or (z, labels int64 [n]) with
        every class in turn (0, 1, .., K-1, 0, ..) for a conditional model."""
        z, classes = self.fixed_noise(n, stream), self.model_config.n_classes
        return (z, torch.arange(n, device=self.acc.device) % classes) if classes else (z,)

    def real_batch(self, strips: torch.Tensor) -> torch.Tensor:
        """uint8 strips (any device) -> augmented float images on the accelerator."""
        strips = strips.to(self.acc.device, non_blocking=True)
        images = random_window(strips, self.rng, flip=self.config.flip)
        return images.contiguous(memory_format=self.memory_format)

    def train_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One G update after `critic_steps` D updates, one per (uint8 strips [B, 3, R, W],
        city int64 [B]) batch; returns METRICS as a device tensor.

        The step itself (`_step`) runs from a CUDA graph where one was captured, else
        eagerly; what changes per step from the host (the EMA decay) is set here first.
        """
        self.ema_decay.fill_(self.ema.decay(self.step))
        inputs = [tensor for batch in batches for tensor in batch]  # the graph's input buffers
        metrics = self.graphed(inputs) if self.graphed is not None else self._step(inputs)
        self.step += 1
        return metrics

    def _step(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The step's device work: no host syncs, randomness from `self.rng` only.
        `inputs`: strips, cities, strips, cities, .. of each D step in turn."""
        batches = list(zip(inputs[::2], inputs[1::2], strict=True))
        for i, (real_strips, cities) in enumerate(batches):
            real = self.real_batch(real_strips)
            labels = cities.to(self.acc.device) if self.model_config.n_classes else None
            fake = self._generate(real.shape[0], labels)
            r1_due = (self.step * len(batches) + i) % self.config.r1_every == 0
            loss_d, real_logits, fake_logits = self._update_d(real, fake, labels, r1_due)
        loss_g = self._update_g(fake, labels)
        self.ema.update(self.G, self.ema_decay)
        values = [
            loss_d,
            loss_g,
            real_logits.mean(),
            fake_logits.mean(),
            real_logits.mean() - fake_logits.mean(),
            (real_logits > 0).float().mean(),
            self.ada.p,
            batch_spread(real),
        ]
        return torch.stack(values).detach().float()

    def _generate(self, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        with self.acc.autocast():
            fake = self.g_forward(self.noise(n), labels)
        return fake.contiguous(memory_format=self.memory_format)

    def _discriminate(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's logits float [B] on `images` after DiffAugment (if any): every D call."""
        if self.policy:
            images = diff_augment(images, self.policy, self.ada.p, self.rng)
            images = images.contiguous(memory_format=self.memory_format)
        return self.d_forward(images, labels).float()

    def _update_d(
        self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, r1_due: bool
    ) -> tuple[torch.Tensor, ...]:
        r1 = r1_due and self.config.r1_gamma > 0
        if r1:  # R1 differentiates D at its real input
            real = real.detach().requires_grad_(True)
        with self.acc.autocast():
            real_logits = self._discriminate(real, labels)
            fake_logits = self._discriminate(fake.detach(), labels)
            err_d = self.loss.d_loss(real_logits, fake_logits)
        if r1:
            gamma = self.config.r1_gamma * self.config.r1_every
            err_d = err_d + r1_penalty(real_logits, real, gamma)
        if self.loss.needs_gp:
            critic = functools.partial(self.D, y=labels)
            err_d = err_d + gradient_penalty(critic, real, fake.detach(), self.config.gp_weight)
        self.opt_d.zero_grad(set_to_none=True)
        err_d.backward()
        self.acc.mark_step()
        average_gradients(self.D)
        self.opt_d.step()
        self.acc.mark_step()
        if self.config.ada_target:
            r_t = all_mean(real_logits.detach().sign().mean())
            self.ada.update(r_t, real_logits.shape[0] * self.world.size)
        return err_d.detach(), real_logits.detach(), fake_logits.detach()

    def _update_g(self, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """G's update through a frozen D: D's weight gradients would be computed and then
        thrown away (the next D update zeroes them), about a sixth of D's backward work."""
        self.D.requires_grad_(False)
        with self.acc.autocast():
            err_g = self.loss.g_loss(self._discriminate(fake, labels))
        self.D.requires_grad_(True)  # the graph is recorded: the backward keeps D frozen
        self.opt_g.zero_grad(set_to_none=True)
        err_g.backward()
        self.acc.mark_step()
        average_gradients(self.G)
        self.opt_g.step()
        self.acc.mark_step()
        return err_g.detach()

    def refresh_ema_batchnorm(self, batches: int | None = None) -> None:
        """Give the EMA G BatchNorm statistics of its own weights (it copies G's, which
        were gathered with other weights): `batches` (default `ema_bn_batches`) no-grad
        batches of fixed latents. Measured on CPU: 5-minute EMA SWD 3.1 -> 2.6x the
        floor. The count matters too: statistics of 4 batches of 16 moved a 5-minute run's
        score by up to 1.39x the floor from one set of latents to another, and averaged
        worse (2.43 against 2.13 with 64 batches; docs/EVALUATION.md)."""
        batches = self.config.ema_bn_batches if batches is None else batches
        if batches:
            inputs = self.fixed_inputs(self.config.batch_size * batches, 1)
            self.ema.recompute_batchnorm(zip(*(t.split(self.config.batch_size) for t in inputs)))

    def sample_diversity(self, n: int = 64) -> float:
        """`diversity` of the EMA G's images of a fixed latent batch, BatchNorm refreshed
        from at most PROBE_BN_BATCHES batches: it runs at every log line."""
        self.refresh_ema_batchnorm(min(self.config.ema_bn_batches, PROBE_BN_BATCHES))
        with torch.no_grad():
            return diversity(self.ema.model(*self.fixed_inputs(n, 2)))

    def state_dict(self) -> dict:
        """Model, optimizer and EMA state; per-rank streams are in `rank_state`."""
        return {
            "step": self.step,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(),
            "ada_p": self.ada.p.detach().clone(),
            "seconds": self.seconds,
        }

    def rank_state(self) -> dict:
        """This rank's random streams (each rank draws different noise)."""
        return {"rng": self.rng.get_state(), "torch_rng": torch.get_rng_state()}

    def load_rank_state(self, state: dict) -> bool:
        """False where the noise stream came from another device type and was re-seeded."""
        torch.set_rng_state(state["torch_rng"].cpu())
        return set_state(self.rng, state["rng"])

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.seconds = state.get("seconds", 0.0)
        if "ada_p" in state:  # checkpoints from before ADA have none: p starts afresh
            self.ada.p.copy_(state["ada_p"])  # in place: a captured graph reads this tensor

    def _step_state(self) -> Iterator[torch.Tensor]:
        """Every tensor a step changes: weights, buffers, optimizer state, ADA's p."""
        for module in (self.G, self.D, self.ema.model):
            yield from module.parameters()
            yield from module.buffers()
        for optimizer in (self.opt_g, self.opt_d):
            for state in optimizer.state.values():
                yield from (v for v in state.values() if torch.is_tensor(v))
        yield self.ada.p


def graph_plan(config: TrainConfig, accelerator: Accelerator, world: World, needs_gp: bool) -> bool:
    """Whether this trainer captures its step (TrainConfig.cuda_graph on a CUDA device).

    Graphs are CUDA's; elsewhere the option is moot and nothing is said. On CUDA, what
    a fixed graph cannot replay keeps the step eager, with one warning saying why: lazy
    R1 (its step differs every `r1_every` steps), WGAN-GP's double backward, several
    processes (the gradient all-reduce) and torch.compile (its own graphs).
    """
    if not (config.cuda_graph and accelerator.kind == "cuda"):
        return False
    blockers = [
        ("R1 (r1_gamma > 0)", config.r1_gamma > 0),
        ("WGAN-GP", needs_gp),
        ("nproc > 1", world.size > 1),
        ("compile", bool(config.compile)),
    ]
    reasons = [name for name, present in blockers if present]
    if reasons:
        warnings.warn(f"CUDA graph off ({', '.join(reasons)}): the step runs eagerly", stacklevel=3)
        return False
    return True


def _compiled(
    G: torch.nn.Module, D: torch.nn.Module, backend: str, accelerator: Accelerator
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D compiled with `backend`, tried once on a small batch; eager if that fails.

    Compilation fails on some backend/layout mixes (DESIGN.md: channels_last tripped a
    stride assert in convolution_backward), so a failure costs a warning, not the run.
    """
    if not backend:
        return G, D
    g, d = torch.compile(G, backend=backend), torch.compile(D, backend=backend)
    saved = [b.clone() for b in (*G.buffers(), *D.buffers())]  # the trial must not move BN stats
    try:
        with accelerator.autocast():
            z = torch.zeros(2, G.nz, device=accelerator.device)
            y = torch.zeros(2, dtype=torch.int64, device=accelerator.device) if G.classes else None
            d(g(z, y), y).float().sum().backward()
    except Exception as exc:
        warnings.warn(f"torch.compile({backend!r}) failed, training eagerly: {exc}", stacklevel=2)
        return G, D
    finally:
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, value in zip((*G.buffers(), *D.buffers()), saved):
                buffer.copy_(value)
    return g, d
