"""Benchmark: catalog + shard images/s per core, against the naive preparation.

Naive = what the original project did to get training images: every photo fully
decoded, resized, written as one file per image, in a single process. Ours = the
catalog's structural checks plus the shard writer (draft-mode decode, one strip per
photo, tar shards), on all cores. Both on the same synthetic MSLS photos, in the same
run; the result is a ratio, because these machines are noisy.

    .venv/bin/python -m benchmarks.prepare [--images 1200] [--out benchmarks/results/prepare.json]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torchvision import transforms

from shards.imaging import ShardConfig
from shards.layout import DataLayout
from shards.msls import MslsSource, read_member
from shards.parallel import cpu_count
from shards.pipeline import prepare_dataset
from shards.synthetic import SyntheticConfig, write_synthetic_source

GOAL_PER_CORE_RATIO = 4.0


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(work: Callable[[], int]) -> dict:
    """Run `work` (returns images processed); wall and CPU seconds, rates."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    images = work()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {
        "images": images,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "images_per_s": round(images / wall, 1),
        "cores_used": round(cpu / wall, 2),
        "images_per_s_per_core": round(images / cpu, 1),
    }


# The original project's preparation (seeds/000): each photo fully decoded, shifted
# horizontally by up to 20%, centre-cropped to 256 and resized to 64, with PIL.
ORIGINAL = transforms.Compose(
    [transforms.RandomAffine(degrees=0, translate=(0.2, 0.0)), transforms.CenterCrop(256),
     transforms.Resize(64)]
)  # fmt: skip


def naive(source_dir: Path, out_dir: Path) -> int:
    """Full decode, the original's transforms, one JPEG file per image, one process."""
    members, _ = MslsSource(source_dir).image_members()
    for (_, city, _, key), member in members.items():
        data = read_member(source_dir, member.archive, member.member, 1 << 25)
        image = ORIGINAL(Image.open(io.BytesIO(data)).convert("RGB"))
        (out_dir / city).mkdir(parents=True, exist_ok=True)
        image.save(out_dir / city / f"{key}.jpg", quality=95)
    return len(members)


def ours(source_dir: Path, data_root: Path) -> int:
    """Catalog + shards on all cores (shards of 250 so every core has several)."""
    prepare_dataset(source_dir, DataLayout.at(data_root), shard=ShardConfig(shard_size=250))
    return len(MslsSource(source_dir).image_members()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepare.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="msls-bench-"))
    try:
        source = work / "raw"
        write_synthetic_source(source, SyntheticConfig(n_images=args.images))
        naive_result = timed(lambda: naive(source, work / "naive"))
        ours_result = timed(lambda: ours(source, work / "data"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = ours_result["images_per_s_per_core"] / naive_result["images_per_s_per_core"]
    result = {
        "benchmark": "prepare",
        "machine": {"cores": cpu_count(), "python": platform.python_version()},
        "naive": naive_result,
        "ours": ours_result,
        "per_core_ratio": round(ratio, 2),
        "wall_ratio": round(ours_result["images_per_s"] / naive_result["images_per_s"], 2),
        "goal_per_core_ratio": GOAL_PER_CORE_RATIO,
        "goal_met": ratio >= GOAL_PER_CORE_RATIO,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
