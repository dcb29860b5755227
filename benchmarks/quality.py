"""Benchmark: which training configuration learns most at equal wall-clock? The sweep.

Named configurations (ARMS) each train from scratch for the same wall-clock on the same
train photos, several seeds each; each EMA generator then draws as many images as the
val split holds, scored by SWD (`gan.metrics.swd`, x 1e3, lower is better) against val,
and divided by the real-vs-real floor (train vs val): 1 is as good as real photos.
- Our arms run `msls train --minutes` as users do (`tasks.train.train_model`: shards,
  the loader, the EMA generator with its own BatchNorm statistics).
- "recipe" is pytorch/examples' DCGAN (`benchmarks.train`: ImageFolder on the full-size
  JPEGs, fp32, width 64, batch 128, Adam 2e-4), for the same wall-clock, loader start
  included, scored with BatchNorm in eval and in train mode (keeping the better).
Arms run seed-major (every arm's seed 0, then every arm's seed 1, ...), so load from
other work on a shared machine falls on all arms alike. Each run's checkpoint and a
sample grid stay under <data>/data/runs/sweep-<arm>-s<seed>/.

    python -m benchmarks.train setup --images 2000 --val-fraction 0.1 --out build/quality
    python -m benchmarks.quality --data build/quality --seconds 90 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.train import forever, imagefolder_loader, reference_step
from gan.checkpoint import load_checkpoint
from gan.metrics import swd
from gan.models import Generator, ModelConfig, build_models
from gan.render import image_grid, save_image
from gan.sampling import generate, generator_from_state
from shards.options import build
from shards.parallel import cpu_count
from shards.version import DatasetVersion
from tasks.evaluate import load_images
from tasks.jobs import TrainJob
from tasks.train import train_model

RECIPE = "recipe"
THREADS_NOTE = (
    "On 2 cores shared with other work, 2 intra-op threads ran the width-16 step at 1.5 "
    "steps/s and 1 thread at 7.0 (threads spin waiting for a busy core), so the sweep "
    "runs every arm with 1 thread."
)
DIFFAUGMENT = "color,translation,cutout"
# name -> (TrainConfig changes, ModelConfig changes) on top of the old CPU quickstart
# (BCE, width 16, batch 32, lr 2e-4, transposed G).
ARMS: dict[str, tuple[dict, dict]] = {
    "quickstart": ({}, {}),
    "smooth": ({"label_smoothing": 0.1}, {}),
    "smooth-upsample": ({"label_smoothing": 0.1}, {"generator": "upsample"}),
    "smooth-upsample-diffaug": (
        {"label_smoothing": 0.1, "diffaugment": DIFFAUGMENT},
        {"generator": "upsample"},
    ),
    "smooth-upsample-ada": (
        {"label_smoothing": 0.1, "diffaugment": DIFFAUGMENT, "ada_target": 0.6},
        {"generator": "upsample"},
    ),
    "sn-hinge-ttur-diffaug": (
        {"loss": "hinge", "lr_g": 1e-4, "lr_d": 4e-4, "diffaugment": DIFFAUGMENT},
        {"generator": "upsample", "spectral_norm": True, "d_norm": "none"},
    ),
    RECIPE: ({}, {}),
}


def arm_job(data: Path, arm: str, seconds: float, seed: int) -> TrainJob:
    """The TrainJob of `arm` for `seconds` of training, run directory sweep-<arm>-s<seed>."""
    train, model = ARMS[arm]
    values = {
        "dataset": (data / "version").read_text().strip(),
        "device": "cpu",
        "minutes": seconds / 60,
        "batch_size": 32,
        "ngf": 16,
        "ndf": 16,
        "log_every": 20,
        "seed": seed,
        **train,
        **model,
    }
    job = build(TrainJob, values)
    return replace(job, data_root=str(data / "data"), run=f"sweep-{arm}-s{seed}")


def train_ours(data: Path, arm: str, seconds: float, seed: int) -> tuple[dict, Generator]:
    """(record, EMA generator) after `seconds` of `msls train --minutes` with `arm`."""
    job = arm_job(data, arm, seconds, seed)
    load, start = os.getloadavg()[0], time.perf_counter()
    result = train_model(job)
    wall = time.perf_counter() - start
    state = load_checkpoint(Path(result["checkpoint"]))
    generator, _ = generator_from_state(state, torch.device("cpu"))
    stats = Path(result["run_dir"]) / "stats.jsonl"
    last = json.loads(stats.read_text().splitlines()[-1])
    record = {
        "arm": arm,
        "seed": seed,
        "seconds": round(wall, 1),
        "train_seconds": result["seconds"],
        "steps": result["step"],
        "load_average_before": round(load, 2),
        "health_first_seen": result["health"],
        "final": {k: round(last[k], 4) for k in ("logit_gap", "real_pos", "ada_p", "diversity")},
        "final_real_diversity": round(last["real_diversity"], 4),
    }
    return record, generator


def train_recipe(folder: Path, seconds: float, seed: int) -> tuple[dict, Generator]:
    """(record, G) after `seconds` of the pytorch/examples recipe, loader start included."""
    load, start = os.getloadavg()[0], time.perf_counter()
    torch.manual_seed(seed)
    netG, netD = build_models(ModelConfig())
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batches = forever(imagefolder_loader(folder, 128, cpu_count()))
    steps = 0
    while time.perf_counter() - start < seconds:
        reference_step(netG, netD, optG, optD, next(batches)[0], netG.nz)
        steps += 1
    wall = time.perf_counter() - start
    record = {"arm": RECIPE, "seed": seed, "seconds": round(wall, 1), "steps": steps}
    return {**record, "load_average_before": round(load, 2)}, netG


def score(G: Generator, val: torch.Tensor, floor: float, recipe: bool) -> dict:
    """SWD of len(val) EMA images (fixed latents) against val, and its ratio to the floor;
    the recipe keeps the better of BatchNorm's eval and train modes."""
    results = {}
    for mode in ("eval", "train") if recipe else ("eval",):
        G.train(mode == "train")
        results[mode] = swd(generate(G, len(val), 0, torch.device("cpu")), val, 0)
    best = min(results, key=lambda mode: results[mode]["mean"])
    G.eval()
    mean = results[best]["mean"]
    return {"swd": round(mean, 2), "ratio": round(mean / floor, 2), "bn_mode": best}


def save_grid(G: Generator, path: Path) -> None:
    """64 samples of fixed latents, 8 x 8: what a person judges the arm by."""
    save_image(image_grid(generate(G.eval(), 64, 0, torch.device("cpu")), 8), path)


def summarise(runs: list[dict]) -> dict:
    """Per arm: mean and spread (stdev) over seeds of the ratio to the floor, steps."""
    table = {}
    for arm in dict.fromkeys(run["arm"] for run in runs):
        ratios = [run["ratio"] for run in runs if run["arm"] == arm]
        steps = [run["steps"] for run in runs if run["arm"] == arm]
        table[arm] = {
            "ratio_mean": round(statistics.fmean(ratios), 2),
            "ratio_stdev": round(statistics.stdev(ratios), 2) if len(ratios) > 1 else None,
            "steps_mean": round(statistics.fmean(steps)),
            "seeds": len(ratios),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("build/quality"))
    parser.add_argument("--seconds", type=float, default=90.0, help="wall-clock per run")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per arm")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated ARMS names")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: see THREADS_NOTE)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    root = args.data / "data"
    version = DatasetVersion(root / "datasets" / (args.data / "version").read_text().strip())
    val = load_images(version, "val", 10**6, 0)[0]
    train = load_images(version, "train", 10**6, 0)[0][: len(val)]
    floor = swd(train, val, 0)["mean"]
    runs = []
    for seed in range(args.seeds):  # seed-major: machine load hits every arm alike
        for arm in arms:
            if arm == RECIPE:
                record, G = train_recipe(args.data / "imagefolder", args.seconds, seed)
            else:
                record, G = train_ours(args.data, arm, args.seconds, seed)
            record.update(score(G, val, floor, arm == RECIPE))
            save_grid(G, root / "runs" / f"sweep-{arm}-s{seed}" / "grid.png")
            runs.append(record)
            print(json.dumps(record), flush=True)
    result = {
        "benchmark": "quality-sweep",
        "machine": {
            "cores": cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
            "shared": "2 cores shared with other work; arms interleaved seed-major",
        },
        "threads": args.threads,
        "threads_note": THREADS_NOTE,
        "seconds_per_run": args.seconds,
        "order": "seed-major: every arm's seed 0, then every arm's seed 1, ...",
        "val_images": len(val),
        "floor_swd": round(floor, 2),
        "protocol": "EMA G, len(val) images, SWD vs val centre windows / train-vs-val floor",
        "arms": summarise(runs),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["arms"], indent=2))


if __name__ == "__main__":
    main()
