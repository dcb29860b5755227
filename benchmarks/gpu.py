"""Benchmark on a CUDA GPU, in one run sized for the lent device machine (issues #17, #13).

    python -m benchmarks.gpu --out OUT [--images 4000] [--seconds 45] [--seeds 2]
                             [--preset-minutes 2] [--batch-sizes 256,1024,4096]

1. throughput: the pytorch/examples recipe (ImageFolder on full-size JPEGs, fp32, batch
   128) against ours from shards (device cache) with the `gpu` preset's configuration,
   eager and with the step captured in a CUDA graph, at each batch size;
2. exact resume of a graphed run: N steps == N/2 + restore + N/2, bit for bit;
3. speed that does not cost learning: ours (the `gpu` preset) against the recipe, each
   from scratch for the same wall-clock, several seeds, SWD against training-style val
   windows beside its floor (`gan.metrics`), sample grids;
4. the `gpu` preset for `--preset-minutes`: its grid and SWD.

Writes OUT/gpu.json and PNG grids. Needs torch, torchvision, numpy, pillow, pyarrow and
simplejpeg only: Prefect and MLflow are not on the device machine, so ours trains
through the same trainer, loader and loop as `msls train` (`gan.loop.fit`), without
the Prefect task around it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from benchmarks.train import (
    recipe_for,
    run_ours,
    run_reference,
    setup,
)
from gan.accelerators import resolve_accelerator
from gan.loop import Budget, LoopConfig, fit
from gan.metrics.sliced_wasserstein import swd_against_real
from gan.render import image_grid, save_image
from gan.sampling import generate
from gan.trainer import Trainer
from shards.cache import CachedBatches, load_split
from shards.options import build, flat
from shards.reader import make_batches
from shards.version import DatasetVersion
from tasks.jobs import TrainJob
from tasks.presets import preset_values

# Our arms: the gpu preset, and what it was chosen against on the GPU.
ARMS: dict[str, dict] = {
    "gpu-preset": {},  # label smoothing 0.1, upsample+conv G, DiffAugment
    "smooth-upsample": {"diffaugment": ""},  # the CPU sweep's winners alone
    "transposed": {"generator": "transposed", "diffaugment": ""},  # the paper's G: cheaper
}


@dataclass(frozen=True)
class Bench:
    """Where and how this run measures: `--device cpu` runs the same code as a smoke test."""

    device: str = "cuda"
    samples: int = 2048  # generated images per SWD, and real windows per set (swd2k_valwin)
    overrides: dict = field(default_factory=dict)  # --set name=value over the gpu preset
    arms: dict = field(default_factory=lambda: dict(ARMS))  # --arms: which of ARMS

    def job(self, version: str, seconds: float, seed: int) -> TrainJob:
        """The `gpu` preset (and any --set) for `seconds` of training on `version`."""
        values = {**preset_values("gpu"), "dataset": version, "device": self.device}
        values.update(seed=seed, minutes=seconds / 60)
        values["cache"] = "device" if self.device == "cuda" else "host"
        return build(TrainJob, {**values, **self.overrides})

    def grid(self, G: torch.nn.Module, path: Path) -> None:
        """64 samples of fixed latents, 8 x 8: what a person judges a run by."""
        save_image(image_grid(generate(G, 64, seed=0, device=self.device), 8), path)


def throughput(
    bench: Bench, data: Path, job: TrainJob, batches: list[int], steps: int
) -> list[dict]:
    """Images/s of each arm's model at each batch size, eager and CUDA-graphed."""
    rows = []
    for arm, changes in bench.arms.items():
        arm_job = replace_options(job, changes)
        for batch in batches:
            for graph in (False, True):
                train = replace(arm_job.train, batch_size=batch, cuda_graph=graph)
                row = run_ours(data, bench.device, steps, batch, train, arm_job.model)
                rows.append({"arm": arm, **row})
    return rows


def resume_is_exact(bench: Bench, version: DatasetVersion, job: TrainJob, steps: int = 20) -> dict:
    """A graphed run of `steps`, against `steps/2`, a restore into a new trainer, `steps/2`."""
    acc = resolve_accelerator(bench.device)
    images, cls = load_split(version, "train", device=acc.device)
    train, model = job.train, replace(job.model, resolution=version.resolution)

    def fresh() -> tuple[Trainer, CachedBatches]:
        batches = CachedBatches(images, cls, len(version.cities), job.loader,
                                batch_size=train.batch_size, generator_seed=0)  # fmt: skip
        return Trainer(train, model, acc), batches

    whole, batches = fresh()
    for _ in range(steps):
        whole.train_step([next(batches)])
    first, batches = fresh()
    for _ in range(steps // 2):
        first.train_step([next(batches)])
    state = copy.deepcopy(first.state_dict())
    rank, data = copy.deepcopy(first.rank_state()), batches.state_dict()
    second, batches = fresh()
    second.load_state_dict(state)
    second.load_rank_state(rank)
    batches.load_state_dict(data)
    for _ in range(steps - steps // 2):
        second.train_step([next(batches)])
    same = all(
        torch.equal(a, b) for a, b in zip(whole.G.state_dict().values(),
                                          second.G.state_dict().values())
    )  # fmt: skip
    return {"steps": steps, "graphed": whole.graphed is not None and not whole.graphed.failed,
            "bit_exact": same}  # fmt: skip


def train_ours(version_dir: Path, job: TrainJob, run_dir: Path) -> tuple[torch.nn.Module, int]:
    """(EMA G with its own BatchNorm statistics, steps) after `job.minutes` of `fit`."""
    acc = resolve_accelerator(job.device)
    version = DatasetVersion(version_dir)
    batches = make_batches(version, "train", job.loader, batch_size=job.train.batch_size,
                           seed=job.train.seed, device=acc.device)  # fmt: skip
    model = replace(job.model, resolution=version.resolution)
    trainer = Trainer(job.train, model, acc)
    run_dir.mkdir(parents=True, exist_ok=True)
    fit(trainer, batches, Budget(minutes=job.minutes), run_dir, LoopConfig(log_every=100))
    trainer.refresh_ema_batchnorm()
    return trainer.ema.model.eval(), trainer.step


def train_recipe(
    bench: Bench, folder: Path, seconds: float, seed: int
) -> tuple[torch.nn.Module, int]:
    """pytorch/examples' G after `seconds` of its loop (loader start-up included)."""
    workers = min(16, os.cpu_count() or 1)
    return recipe_for(folder, seconds, seed, torch.device(bench.device), workers)


def score(bench: Bench, G: torch.nn.Module, strips: dict[str, torch.Tensor], seed: int) -> dict:
    """SWD of G's images against training-style val windows, with the floor (x 1e3)."""
    with torch.no_grad():
        fake = generate(G, bench.samples, seed=1000 + seed, device=bench.device)
    device = torch.device(bench.device)
    result = swd_against_real(fake, strips["val"], strips["train"], seed, device)
    keys = ("mean", "std", "floor_mean", "floor_std", "ratio", "ratio_as_real")
    return {"swd" if k == "mean" else k: round(result[k], 3) for k in keys}


def recipe_score(bench: Bench, G: torch.nn.Module, strips: dict, seed: int) -> dict:
    """The recipe scored with BatchNorm in eval and in train mode (it samples in train)."""
    modes = {}
    for mode in ("eval", "train"):
        G.train(mode == "train")
        modes[mode] = score(bench, G, strips, seed)
    best = min(modes, key=lambda m: modes[m]["swd"])
    return {**modes[best], "bn_mode": best}


def quality(bench: Bench, data: Path, version: str, seconds: float, seeds: int, out: Path) -> dict:
    """Each of `ARMS` and the recipe from scratch for `seconds`, seed-major; scores, grids."""
    version_dir = data / "data" / "datasets" / version
    v = DatasetVersion(version_dir)
    strips = {s: load_split(v, s)[0] for s in ("val", "train")}
    rows = []
    for seed in range(seeds):  # seed-major: drift in the machine hits every arm alike
        for arm, changes in bench.arms.items():
            job = replace_options(bench.job(version, seconds, seed), changes)
            G, steps = train_ours(version_dir, job, out / f"{arm}-{seed}")
            rows.append({"arm": arm, "seed": seed, "steps": steps,
                         **score(bench, G, strips, seed)})  # fmt: skip
            bench.grid(G, out / f"{arm}-{seed}.png")
        G, steps = train_recipe(bench, data / "imagefolder", seconds, seed)
        rows.append({"arm": "recipe", "seed": seed, "steps": steps,
                     **recipe_score(bench, G, strips, seed)})  # fmt: skip
        bench.grid(G, out / f"recipe-{seed}.png")
    return {"seconds_per_arm": seconds, "arms": {"recipe": "pytorch/examples", **bench.arms},
            "runs": rows}  # fmt: skip


def replace_options(job: TrainJob, changes: dict) -> TrainJob:
    """`job` with some options changed by name (the arms' differences from the preset)."""
    return build(TrainJob, {**flat(job), **changes}) if changes else job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--preset-minutes", type=float, default=2.0)
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--arms", default=",".join(ARMS), help="which of ARMS to run")
    parser.add_argument("--samples", type=int, default=2048, help="generated images per SWD")
    parser.add_argument("--device", default="cuda", help="cpu: a quick smoke test of the script")
    parser.add_argument("--set", nargs="*", default=[], help="name=value options over the preset")
    args = parser.parse_args()
    arms = {name: ARMS[name] for name in args.arms.split(",")}
    bench = Bench(args.device, args.samples, _parse_set(args.set), arms)
    data, result = args.out / "bench", {"benchmark": "gpu"}
    gpu = torch.cuda.get_device_name() if bench.device == "cuda" else "cpu"
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "device": gpu, "overrides": bench.overrides}  # fmt: skip
    setup(args.images, data, val_fraction=0.1)
    version = (data / "version").read_text().strip()
    v = DatasetVersion(data / "data" / "datasets" / version)
    job = bench.job(version, 1.0, 0)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    result["throughput"] = throughput(bench, data, job, sizes, args.steps)
    result["reference"] = run_reference(data / "imagefolder", bench.device, args.steps, 16)
    _write(args.out, result)
    result["resume"] = resume_is_exact(bench, v, job)
    _write(args.out, result)
    result["quality"] = quality(bench, data, version, args.seconds, args.seeds, args.out)
    _write(args.out, result)
    preset = bench.job(version, args.preset_minutes * 60, 0)
    G, steps = train_ours(v.path, preset, args.out / "preset")
    strips = {s: load_split(v, s)[0] for s in ("val", "train")}
    scored = score(bench, G, strips, 0)
    result["preset_run"] = {"minutes": args.preset_minutes, "steps": steps, **scored}
    bench.grid(G, args.out / "preset.png")
    _write(args.out, result)


def _parse_set(pairs: list[str]) -> dict[str, object]:
    """["ngf=8", "diffaugment=color"] -> {"ngf": 8, "diffaugment": "color"} (JSON values)."""
    values = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        try:
            values[name] = json.loads(text)
        except json.JSONDecodeError:
            values[name] = text
    return values


def _write(out: Path, result: dict) -> None:
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
