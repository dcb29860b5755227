"""Benchmark: does our speed cost learning? SWD after equal wall-clock, ours vs the recipe.

Every arm trains from scratch on the same train photos, on the same device, with the
clock running from before any data is read:
- ours: `msls train --minutes` as users run it (`tasks.train.train_model`: shards, the
  device cache on an accelerator, bf16 and channels_last on CUDA, the EMA generator),
  once per batch size asked for; `--lr-rule sqrt` scales the learning rate by
  sqrt(batch / 128), `none` keeps the recipe's 2e-4;
- the reference: the pytorch/examples recipe (`benchmarks.train`: ImageFolder on the
  full-size JPEGs, fp32, batch 128, Adam), for as long as the slowest of our arms of the
  same seed took in all, so it never gets less time.
Each generator then draws the same latents, scored as `msls evaluate` scores it
(`swd_against_real`: SWD x 1e3, lower is better, against training-style windows of the
held-out val strips, beside the train-vs-val window floor).
The reference is scored with BatchNorm in eval mode and in train mode (as pytorch/examples
draws its samples) and keeps its better score; ours is scored as `msls evaluate` scores it.

    python -m benchmarks.train setup --images 4000 --val-fraction 0.2 --out build/quality
    python -m benchmarks.quality --data build/quality --device cuda --seconds 120
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.train import forever, imagefolder_loader, reference_step
from gan.accelerators import resolve_accelerator
from gan.checkpoint import load_checkpoint
from gan.metrics.sliced_wasserstein import swd_against_real
from gan.models import Generator, ModelConfig, build_models
from gan.sampling import generate, generator_from_state
from shards.parallel import cpu_count
from shards.reader import DatasetVersion
from tasks.evaluate import load_strips
from tasks.train import train_job, train_model

REFERENCE_BATCH = 128
REFERENCE_LR = 2e-4


def learning_rate(batch: int, rule: str) -> float:
    """The recipe's 2e-4, or scaled by sqrt(batch / 128) for `rule` "sqrt"."""
    return REFERENCE_LR * (math.sqrt(batch / REFERENCE_BATCH) if rule == "sqrt" else 1.0)


def train_ours(data: Path, device: str, seconds: float, batch: int, lr: float, seed: int):
    """(arm record, EMA generator) after `seconds` of `msls train --minutes`."""
    run = f"quality-b{batch}-s{seed}"
    shutil.rmtree(data / "data" / "runs" / run, ignore_errors=True)
    job = train_job(
        str(data / "data"),
        dataset=(data / "version").read_text().strip(),
        device=device,
        minutes=seconds / 60,
        batch_size=batch,
        seed=seed,
    )
    job = replace(job, run=run, train=replace(job.train, lr_g=lr, lr_d=lr))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = train_model(job)
    wall = time.perf_counter() - start
    state = load_checkpoint(Path(result["checkpoint"]))
    generator, _ = generator_from_state(state, resolve_accelerator(device).device)
    record = _record("ours", batch, lr, seed, wall, result["step"], load)
    return record, generator


def train_reference(folder: Path, device: str, seconds: float, workers: int, seed: int):
    """(arm record, G) after `seconds` of the pytorch/examples recipe, loader start included."""
    accelerator = resolve_accelerator(device)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    torch.manual_seed(seed)
    netG, netD = (m.to(accelerator.device) for m in build_models(ModelConfig()))
    optG = torch.optim.Adam(netG.parameters(), lr=REFERENCE_LR, betas=(0.5, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=REFERENCE_LR, betas=(0.5, 0.999))
    batches = forever(imagefolder_loader(folder, REFERENCE_BATCH, workers))
    steps = 0
    while time.perf_counter() - start < seconds:
        real = next(batches)[0].to(accelerator.device, non_blocking=True)
        reference_step(netG, netD, optG, optD, real, netG.nz)
        steps += 1
    accelerator.synchronize()
    wall = time.perf_counter() - start
    return _record("reference", REFERENCE_BATCH, REFERENCE_LR, seed, wall, steps, load), netG


def _record(arm: str, batch: int, lr: float, seed: int, wall: float, steps: int, load: float):
    return {
        "arm": arm,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "seconds": round(wall, 1),
        "steps": steps,
        "images_seen": steps * batch,
        "load_average_before": round(load, 2),
    }


def score(G: Generator, real: tuple, n: int, device: torch.device, seed: int) -> dict:
    """SWD of n of G's images (latents from `seed`) against windows of (val, train) strips."""
    return swd_against_real(generate(G, n, seed, device), *real, seed, device)


def score_reference(G: Generator, real: tuple, n: int, device: torch.device, seed: int) -> dict:
    """Both BatchNorm modes; the better one is the reference's score."""
    modes = {
        "eval": score(G.eval(), real, n, device, seed),
        "train": score(G.train(), real, n, device, seed),
    }
    best = min(modes, key=lambda mode: modes[mode]["mean"])
    return {**modes[best], "bn_mode": best, "mean_by_bn_mode": {m: modes[m]["mean"] for m in modes}}


def summarise(arms: list[dict]) -> dict:
    """Mean SWD over seeds per configuration, and whether our best is at least as good."""
    by_config: dict[str, list[float]] = {}
    for arm in arms:
        name = "reference" if arm["arm"] == "reference" else f"ours-b{arm['batch']}"
        by_config.setdefault(name, []).append(arm["swd"]["mean"])
    means = {name: round(statistics.fmean(values), 3) for name, values in by_config.items()}
    ours = min((name for name in means if name != "reference"), key=means.get)
    return {
        "swd_mean_by_config": means,
        "best_ours": ours,
        "ours_at_least_as_good": means[ours] <= means["reference"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("build/quality"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=120.0, help="wall-clock per arm")
    parser.add_argument("--batch-sizes", default="128", help="ours, comma-separated")
    parser.add_argument("--lr-rule", choices=("none", "sqrt"), default="none")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per arm")
    parser.add_argument("--images", type=int, default=2048, help="images per SWD set")
    parser.add_argument("--workers", type=int, default=0, help="reference loader (0: cores)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality-cpu.json"))
    args = parser.parse_args()
    device = resolve_accelerator(args.device).device
    version = DatasetVersion(
        args.data / "data" / "datasets" / (args.data / "version").read_text().strip()
    )
    real = tuple(load_strips(version, split, 10**9, 0)[0] for split in ("val", "train"))  # all
    n = args.images  # windows drawn with replacement: a fixed count, whatever the splits hold
    arms = []
    for seed in range(args.seeds):
        ours = []
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            lr = learning_rate(batch, args.lr_rule)
            record, G = train_ours(args.data, args.device, args.seconds, batch, lr, seed)
            ours.append({**record, "swd": score(G, real, n, device, 0)})
        seconds = max(arm["seconds"] for arm in ours)
        record, G = train_reference(
            args.data / "imagefolder", args.device, seconds, args.workers or cpu_count(), seed
        )
        arms += [*ours, {**record, "swd": score_reference(G, real, n, device, 0)}]
    result = {
        "benchmark": "quality",
        "machine": {
            "cores": cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else device.type,
        },
        "seconds_per_arm": args.seconds,
        "lr_rule": args.lr_rule,
        "images": n,
        "floor": {k: v for k, v in arms[0]["swd"].items() if k.startswith("floor")},
        "arms": arms,
        **summarise(arms),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
