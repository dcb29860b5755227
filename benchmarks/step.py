"""Benchmark: time of one training step of a preset against the step computed as before.

"ours" is the trainer as it is. Each other arm undoes one speed change on an otherwise
identical trainer (same seed, same weights, the same arithmetic):
- "materialised": G's upsample stages as nn.Sequential(nn.Upsample, nn.Conv2d) carrying
  the same weight, instead of the equivalent sub-pixel conv (gan.models.NearestUpConv);
- "index-translation": DiffAugment's translation as advanced indexing of the padded
  image instead of one gather (gan.augment);
- "d-grads": D left trainable through G's update, so its weight gradients are computed
  there and thrown away, instead of a frozen D.
The arms train on the same random strips and alternate in rounds (`--rounds` of
`--steps` timed steps each, after a warm-up) so machine noise hits all of them; the
result is each arm's median step time and ours as a ratio of it. No data loading is timed.

    python -m benchmarks.step --preset cpu --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gan import augment
from gan.accelerators import resolve_accelerator
from gan.models import NearestUpConv
from gan.trainer import Trainer
from shards.options import build
from tasks.jobs import TrainJob
from tasks.presets import preset_values

ARMS = ("ours", "materialised", "index-translation", "d-grads")


def materialise_upsampling(generator: nn.Module) -> None:
    """Swap each NearestUpConv of `generator` for Upsample + Conv2d with its weight, in place."""
    for name, module in list(generator.named_modules()):
        if isinstance(module, NearestUpConv):
            conv = nn.Conv2d(module.in_channels, module.out_channels, 3, 1, 1, bias=False)
            conv.weight = module.weight
            parent, _, child = name.rpartition(".")
            generator.get_submodule(parent).register_module(
                child, nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)
            )


def index_translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's translation as first written: advanced indexing of the padded image,
    a [B, H, W, C] result permuted back (the same shifts and draws as gan.augment's)."""
    rows, cols = augment.shifted_positions(x, generator)
    samples = torch.arange(x.shape[0], device=x.device)[:, None, None]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[samples, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def trainer_for(preset: str, arm: str = "ours") -> Trainer:
    """A fresh trainer of `preset` on the CPU (same seed, so the same initial weights),
    computing its step the way `arm` names (ARMS; "index-translation" needs `arm_context`)."""
    job = build(TrainJob, {**preset_values(preset, "cpu"), "device": "cpu"})
    trainer = Trainer(job.train, job.model, resolve_accelerator("cpu"))
    if arm == "materialised":
        for generator in (trainer.G, trainer.ema.model):
            materialise_upsampling(generator)
    elif arm == "d-grads":  # G's update can no longer freeze D: it stays trainable
        trainer.D.requires_grad_ = lambda requires_grad=True: trainer.D
    return trainer


@contextlib.contextmanager
def arm_context(arm: str) -> Iterator[None]:
    """Where `arm` runs: DiffAugment's translation swapped for the indexing form inside
    "index-translation" (a module-level table, so only while that arm's steps run)."""
    if arm != "index-translation":
        yield
        return
    ours = augment._TRANSFORMS["translation"]
    augment._TRANSFORMS["translation"] = index_translation
    try:
        yield
    finally:
        augment._TRANSFORMS["translation"] = ours


def time_steps(trainer: Trainer, batch: list[tuple[torch.Tensor, ...]], steps: int) -> float:
    """Seconds per step over `steps` steps."""
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="a preset of tasks/presets.py")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 on quiet cores)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm per round")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arms = {name: trainer_for(args.preset, name) for name in ARMS}
    batch_size = arms["ours"].config.batch_size
    size = arms["ours"].model_config.resolution
    strips = torch.randint(0, 256, (batch_size, 3, size, 2 * size), dtype=torch.uint8)
    batch = [(strips, torch.zeros(batch_size, dtype=torch.int64))]
    times: dict[str, list[float]] = {name: [] for name in arms}
    for name, trainer in arms.items():
        with arm_context(name):
            time_steps(trainer, batch, 5)  # warm-up: allocator, oneDNN primitives
    for _ in range(args.rounds):
        for name, trainer in arms.items():
            with arm_context(name):
                times[name].append(time_steps(trainer, batch, args.steps))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "benchmark": "step",
        "machine": {
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "preset": args.preset,
        "batch_size": batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "ms_per_step": {name: round(1e3 * m, 1) for name, m in medians.items()},
        "ms_per_step_range": {
            name: [round(1e3 * min(t), 1), round(1e3 * max(t), 1)] for name, t in times.items()
        },
        "ratio_ours_to": {
            name: round(medians["ours"] / m, 3) for name, m in medians.items() if name != "ours"
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
