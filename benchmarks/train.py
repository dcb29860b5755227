"""Benchmark: training images/s of our trainer fed from shards vs the pytorch/examples recipe.

The reference is pytorch/examples/dcgan as people run it: `ImageFolder` over full-size
JPEGs with `Resize(64) + CenterCrop(64) + ToTensor + Normalize`, a DataLoader, fp32,
batch 128, plain Adam. Ours is `gan.trainer.Trainer` on the same photos, prepared once
into shards, read through `shards.reader` (device cache on an accelerator), with the
accelerator's fast settings. Same run, same images; report ratios.

    python -m benchmarks.train setup --images 1000 --out build/bench     # needs the full env
    python -m benchmarks.train run --data build/bench --device cpu       # torch + torchvision only
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from gan.accelerators import resolve_accelerator
from gan.models import ModelConfig, build_models
from gan.trainer import TrainConfig, Trainer
from shards.cache import CachedBatches, load_split
from shards.loader import LoaderConfig
from shards.parallel import cpu_count
from shards.streaming import StreamingBatches
from shards.version import DatasetVersion


def setup(images: int, out: Path, val_fraction: float = 0.0) -> None:
    """Synthetic photos as a dataset version, and its train split's full-size JPEGs as an
    ImageFolder tree (the reference's input): the same photos both ways."""
    from shards.imaging import ShardConfig
    from shards.layout import DataLayout
    from shards.pipeline import prepare_dataset
    from shards.split import SplitConfig
    from shards.synthetic import SyntheticConfig, write_synthetic_source

    raw = out / "raw"
    write_synthetic_source(raw, SyntheticConfig(n_images=images))
    _, version_dir = prepare_dataset(
        raw,
        DataLayout.at(out / "data"),
        SplitConfig(val_fraction=val_fraction),
        ShardConfig(shard_size=100),
    )
    write_imagefolder(raw, version_dir / "manifest.parquet", out / "imagefolder")
    shutil.rmtree(raw)
    (out / "version").write_text(version_dir.name)


def write_imagefolder(raw: Path, manifest: Path, folder: Path) -> None:
    """The source JPEGs of the manifest's train rows as folder/<city>/<member name>."""
    rows = pq.read_table(
        manifest,
        columns=["city", "source_archive", "source_member"],
        filters=[("split", "==", "train")],
    ).to_pylist()
    for archive in sorted({row["source_archive"] for row in rows}):
        with zipfile.ZipFile(raw / archive) as zf:
            for row in rows:
                if row["source_archive"] == archive:
                    target = folder / row["city"] / row["source_member"].rsplit("/", 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(row["source_member"]))


def reference_step(netG, netD, optG, optD, real: torch.Tensor, nz: int) -> None:
    """pytorch/examples/dcgan's iteration (BCE on logits: same arithmetic as Sigmoid + BCELoss)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    batch = real.shape[0]
    ones, zeros = torch.ones(batch, device=real.device), torch.zeros(batch, device=real.device)
    netD.zero_grad()
    fake = netG(torch.randn(batch, nz, device=real.device))
    (bce(netD(real), ones) + bce(netD(fake.detach()), zeros)).backward()
    optD.step()
    netG.zero_grad()
    bce(netD(fake), ones).backward()
    optG.step()


def recipe_for(
    folder: Path, seconds: float, seed: int, device: torch.device, workers: int
) -> tuple[torch.nn.Module, int]:
    """(G, steps) after `seconds` of pytorch/examples' loop, its loader's start included:
    the recipe arm of the equal-wall-clock comparisons (benchmarks.quality, .gpu)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    netG, netD = (m.to(device) for m in build_models(ModelConfig()))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batches, steps = forever(imagefolder_loader(folder, 128, workers)), 0
    while time.perf_counter() - start < seconds:
        reference_step(netG, netD, optG, optD, next(batches)[0].to(device), netG.nz)
        steps += 1
    return netG, steps


def imagefolder_loader(folder: Path, batch: int, workers: int) -> DataLoader:
    recipe = transforms.Compose(
        [
            transforms.Resize(64),
            transforms.CenterCrop(64),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    data = datasets.ImageFolder(str(folder), transform=recipe)
    return DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def forever(loader: DataLoader):
    while True:
        yield from loader


def run_reference(folder: Path, device: str, steps: int, workers: int) -> dict:
    accelerator = resolve_accelerator(device)
    torch.manual_seed(0)
    netG, netD = (m.to(accelerator.device) for m in build_models(ModelConfig()))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batches = forever(imagefolder_loader(folder, 128, workers))
    for _ in range(2):  # warm-up: workers start, cudnn picks algorithms
        reference_step(netG, netD, optG, optD, next(batches)[0].to(accelerator.device), 100)
    accelerator.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        reference_step(
            netG, netD, optG, optD, next(batches)[0].to(accelerator.device, non_blocking=True), 100
        )
    accelerator.synchronize()
    seconds = time.perf_counter() - start
    return {
        "batch": 128,
        "steps": steps,
        "seconds": round(seconds, 3),
        "images_per_s": round(128 * steps / seconds, 1),
    }


def run_ours(
    data: Path,
    device: str,
    steps: int,
    batch: int,
    train: TrainConfig = TrainConfig(),
    model: ModelConfig = ModelConfig(),
) -> dict:
    """Our trainer's images/s on the train split held on the device (as `--cache device`)."""
    accelerator = resolve_accelerator(device)
    version = DatasetVersion(data / "data" / "datasets" / (data / "version").read_text().strip())
    images, cls = load_split(version, "train", device=accelerator.device)
    tiles = max(1, (batch * 8) // images.shape[0] + 1)  # a big batch needs a bigger split
    images, cls = images.repeat(tiles, 1, 1, 1), cls.repeat(tiles)
    batches = CachedBatches(
        images, cls, len(version.cities), LoaderConfig(), batch_size=batch, generator_seed=0
    )
    trainer = Trainer(replace(train, batch_size=batch), model, accelerator)
    for _ in range(3):  # warm-up (and, with a CUDA graph, its capture)
        trainer.train_step([next(batches)])
    accelerator.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step([next(batches)])
    accelerator.synchronize()
    seconds = time.perf_counter() - start
    return {
        "batch": batch,
        "compile": train.compile if trainer.g_forward is not trainer.G else "",  # "" on fallback
        "cuda_graph": trainer.graphed is not None and not trainer.graphed.failed,
        "steps": steps,
        "seconds": round(seconds, 3),
        "images_per_s": round(batch * steps / seconds, 1),
    }


def loader_rates(data: Path, folder: Path, batches: int) -> dict:
    """Images/s per core of each loader alone: ImageFolder recipe vs our shard stream (1 worker)."""
    version = DatasetVersion(data / "data" / "datasets" / (data / "version").read_text().strip())
    out = {}
    for name, make in {
        "imagefolder": lambda: forever(imagefolder_loader(folder, 64, 0)),
        "shards": lambda: StreamingBatches(
            version, "train", LoaderConfig(workers=1, cache="none"), batch_size=64, in_process=True
        ),
    }.items():
        iterator = make()
        next(iterator)
        start = time.process_time()
        for _ in range(batches):
            next(iterator)
        out[name] = round(64 * batches / (time.process_time() - start), 1)
    out["ratio"] = round(out["shards"] / out["imagefolder"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("setup")
    prep.add_argument("--images", type=int, default=1000)
    prep.add_argument("--out", type=Path, default=Path("build/bench"))
    prep.add_argument(
        "--val-fraction", type=float, default=0.0, help="held-out val (benchmarks.quality)"
    )
    run = sub.add_parser("run")
    run.add_argument("--data", type=Path, default=Path("build/bench"))
    run.add_argument("--device", default="auto")
    run.add_argument("--steps", type=int, default=20)
    run.add_argument("--batch-sizes", default="128")
    run.add_argument(
        "--workers", type=int, default=0, help="reference DataLoader workers (0: all cores)"
    )
    run.add_argument("--compile", default="", help="torch.compile backend for ours (inductor)")
    run.add_argument("--out", type=Path, default=Path("benchmarks/results/train-cpu.json"))
    args = parser.parse_args()
    if args.command == "setup":
        setup(args.images, args.out, args.val_fraction)
        return
    folder = args.data / "imagefolder"
    result = {
        "benchmark": "train",
        "machine": {
            "cores": cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        },
        "reference": run_reference(folder, args.device, args.steps, args.workers or cpu_count()),
        "ours": [
            run_ours(args.data, args.device, args.steps, int(b), TrainConfig(compile=args.compile))
            for b in args.batch_sizes.split(",")
        ],
        "loader_per_core": loader_rates(args.data, folder, 10),
    }
    best = max(result["ours"], key=lambda r: r["images_per_s"])
    result["best_ratio"] = round(best["images_per_s"] / result["reference"]["images_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
