"""The GAN training step and everything a checkpoint must hold to resume it exactly.

`Trainer.train_step` is the pytorch/examples DCGAN iteration written out plainly:
update D on a real batch and on G's fakes (separate forwards, so BatchNorm sees each
alone), then update G through the just-updated D, then the EMA of G. Metrics stay on
the device; the loop reads them every `log_every` steps, so there is no host sync per
step to starve the accelerator.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from gan.accelerators import Accelerator
from gan.augment import random_window
from gan.distributed import World, average_gradients, broadcast_module
from gan.ema import EMA
from gan.losses import gradient_penalty, make_loss
from gan.models import ModelConfig, build_models
from shards.rng import set_state

METRICS = ("loss_d", "loss_g", "d_real", "d_fake")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (DCGAN defaults). A step is one generator update."""

    batch_size: int = 128  # per process
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: str = "bce"  # bce (non-saturating) | hinge | wgan-gp
    label_smoothing: float = 0.0  # one-sided: real target 1 - s (bce only)
    d_steps: int = 1  # discriminator updates per generator update
    gp_weight: float = 10.0  # wgan-gp only
    ema_beta: float = 0.999
    flip: bool = True
    seed: int = 0
    compile: str = ""  # a torch.compile backend ("inductor"); "" runs eagerly

    def __post_init__(self) -> None:
        rules = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr_g > 0 and self.lr_d > 0, "learning rates must be > 0"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)"),
            (0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)"),
            (self.d_steps >= 1, f"d_steps must be >= 1, got {self.d_steps}"),
            (0 <= self.ema_beta < 1, f"ema_beta must be in [0, 1), got {self.ema_beta}"),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)
        make_loss(self.loss, self.label_smoothing)  # bad names or combinations fail here

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
        betas = (config.beta1, config.beta2)
        self.opt_g = accelerator.optimizer(self.G.parameters(), config.lr_g, betas)
        self.opt_d = accelerator.optimizer(self.D.parameters(), config.lr_d, betas)
        self.ema = EMA(self.G, beta=config.ema_beta)
        self.loss = make_loss(config.loss, config.label_smoothing)
        self.rng = torch.Generator(device=accelerator.device)
        self.rng.manual_seed(config.seed * 7919 + world.rank)  # distinct noise per rank
        self.step = 0

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.model_config.nz, device=self.acc.device, generator=self.rng)

    def real_batch(self, strips: torch.Tensor) -> torch.Tensor:
        """uint8 strips (any device) -> augmented float images on the accelerator."""
        strips = strips.to(self.acc.device, non_blocking=True)
        images = random_window(strips, self.rng, flip=self.config.flip)
        return images.contiguous(memory_format=self.memory_format)

    def train_step(self, strips: list[torch.Tensor]) -> torch.Tensor:
        """One G update after `d_steps` D updates; returns METRICS as a device tensor."""
        for real_strips in strips:
            real = self.real_batch(real_strips)
            fake = self._generate(real.shape[0])
            loss_d, d_real, d_fake = self._update_d(real, fake)
        loss_g = self._update_g(fake)
        self.ema.update(self.G, self.step)
        self.step += 1
        return torch.stack([loss_d, loss_g, d_real, d_fake]).detach().float()

    def _generate(self, n: int) -> torch.Tensor:
        with self.acc.autocast():
            fake = self.g_forward(self.noise(n))
        return fake.contiguous(memory_format=self.memory_format)

    def _update_d(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self.acc.autocast():
            real_logits = self.d_forward(real).float()
            fake_logits = self.d_forward(fake.detach()).float()
            err_d = self.loss.d_loss(real_logits, fake_logits)
        if self.loss.needs_gp:
            err_d = err_d + gradient_penalty(self.D, real, fake.detach(), self.config.gp_weight)
        self.opt_d.zero_grad(set_to_none=True)
        err_d.backward()
        self.acc.mark_step()
        average_gradients(self.D)
        self.opt_d.step()
        self.acc.mark_step()
        return err_d, real_logits.mean(), fake_logits.mean()

    def _update_g(self, fake: torch.Tensor) -> torch.Tensor:
        with self.acc.autocast():
            err_g = self.loss.g_loss(self.d_forward(fake).float())
        self.opt_g.zero_grad(set_to_none=True)
        err_g.backward()
        self.acc.mark_step()
        average_gradients(self.G)
        self.opt_g.step()
        self.acc.mark_step()
        return err_g

    def state_dict(self) -> dict:
        """Model, optimizer and EMA state; per-rank streams are in `rank_state`."""
        return {
            "step": self.step,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(),
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
            d(g(z)).float().sum().backward()
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
