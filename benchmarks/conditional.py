"""Benchmark: does conditioning on the city pay, at the CPU preset's budget? And how few
images can a city have?

Goals (issue 16), on the synthetic source, the CPU preset (`tasks.presets`: width 16,
batch 32, 1.5 minutes), 3 training seeds:
- images generated for city c are classified as c at least 3x as often as chance, by a
  small CNN trained on the train split (`gan.metrics.by_city.city_test`, GAN-test);
- the conditional model's per-city SWD (generated for c vs val of c, `city_swd_valwin`) is
  no worse than the unconditional model's (its samples vs val of c) at equal wall-clock.
Both arms train as users do (`tasks.train.train_model`), seed-major, 1 torch thread.

`--few N,...` adds the small-city measurement: the first city keeps only N train images
(the others all theirs), trained with the same budget through the same Trainer and
cached loader, with `city_temperature` 0.5; we report how often that city's samples are
recognised and their SWD ratio to the city's floor (computed with N of its images).

    python -m benchmarks.train setup --images 2400 --val-fraction 0.2 --out build/conditional
    python -m benchmarks.conditional --data build/conditional --seeds 3 --few 8,32,96
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
from PIL import Image

from flows.options import resolve
from gan.accelerators import resolve_accelerator
from gan.images import image_grid
from gan.loop import Budget, LoopConfig, fit
from gan.metrics import EvalInputs
from gan.metrics.by_city import city_swd_valwin, predict_cities, train_city_classifier
from gan.render import real_vs_fake_by_city, save_image
from gan.sampling import city_index, evaluation_labels, generate, load_generator
from gan.trainer import Trainer
from shards.cache import CachedBatches, load_split
from shards.conditions import class_cities, label_city
from shards.geometry import centre_window
from shards.parallel import cpu_count
from shards.version import DatasetVersion
from tasks.evaluate import load_strips, night_share
from tasks.jobs import TrainJob
from tasks.presets import preset_values
from tasks.train import train_model

ARMS = {
    "unconditional": {},
    "conditional": {"conditional": "city"},
    "conditional-night": {"conditional": "city,night"},
}
FEW_TEMPERATURE = 0.5


class Judge:
    """The fixed yardsticks of every run: val and train images with cities, the classifier."""

    def __init__(self, version: DatasetVersion) -> None:
        self.version, self.cities = version, tuple(version.cities)
        self.val, self.val_labels, _ = load_strips(version, "val", 10**6, 0)
        self.train, self.train_labels, _ = load_strips(version, "train", 10**6, 0)
        started = time.perf_counter()
        centres = centre_window(self.train)
        self.classifier = train_city_classifier(centres, self.train_labels, len(self.cities))
        self.classifier_seconds = round(time.perf_counter() - started, 1)
        real = predict_cities(self.classifier, centre_window(self.val))
        self.val_accuracy = float((real == self.val_labels).float().mean())
        _, classes, _ = load_strips(version, "val", 10**6, 0, "city,night")
        self.night_share = night_share(classes, len(self.cities))

    def score(self, checkpoint: Path, train_labels: torch.Tensor | None = None) -> dict:
        """Per-city SWD (and floors) and, for a conditional G, recognition per city."""
        G, config, _ = load_generator(checkpoint)
        n = len(self.val) // len(self.cities) * len(self.cities)
        classes = evaluation_labels(config, n, self.night_share)
        generated = generate(G, n, 0, labels=classes)
        labels = None if classes is None else label_city(classes, config.conditional)
        train, train_cls = self.train, self.train_labels
        if train_labels is not None:  # the few-images run: its floor uses what it saw
            train, train_cls = train_labels
        inputs = EvalInputs(
            generated=generated, val=self.val, train=train, val_labels=self.val_labels,
            train_labels=train_cls, generated_labels=labels, city_names=self.cities,
        )  # fmt: skip
        by_city = city_swd_valwin(inputs)
        record = {
            "swd_by_city": {c: round(v["mean"], 2) for c, v in by_city["cities"].items()},
            "floor_by_city": {c: round(v["floor_mean"], 2) for c, v in by_city["cities"].items()},
            "swd_city_mean": round(by_city["mean"], 2),
            "swd_city_mean_ratio": round(by_city["mean_ratio"], 2),
        }
        if labels is not None:
            hits = predict_cities(self.classifier, generated) == labels
            learned = torch.isin(labels, self.train_labels.unique())  # not held-out cities
            record["recognised"] = round(float(hits[learned].float().mean()), 3)
            record["recognised_by_city"] = {
                c: round(float(hits[labels == i].float().mean()), 3)
                for i, c in enumerate(self.cities)
            }
        return record


def day_and_night_grid(checkpoint: Path, path: Path, per_city: int = 4) -> None:
    """One row per trained city of a city,night checkpoint: `per_city` samples by day,
    then the same latents by night (the README's figure)."""
    G, config, _ = load_generator(checkpoint)
    learned = [c for c in class_cities(config.classes) if c not in config.untrained]
    days = torch.tensor([city_index(config, c) for c in learned]).repeat_interleave(per_city)
    by_day, by_night = (generate(G, len(days), 0, labels=days + night) for night in (0, 1))
    shape = (len(learned), per_city, *by_day.shape[1:])
    rows = torch.stack([by_day.reshape(shape), by_night.reshape(shape)], dim=1)  # same latents
    save_image(image_grid(rows.flatten(0, 2), 2 * per_city), path)
    Image.open(path).quantize(128).save(path, optimize=True)


SECONDS = 120.0  # what the CPU preset's 2,400 steps took on the sweeps' AVX-512 cores


def preset_job(data: Path, run: str, seed: int, seconds: float, **values) -> TrainJob:
    """The CPU preset's TrainJob with `values` over it, trained for `seconds` (this budget
    replaces the preset's, as a user's `--minutes` does)."""
    dataset = (data / "version").read_text().strip()
    options = {**values, "device": "cpu", "seed": seed, "minutes": seconds / 60}
    job = resolve(TrainJob, {**options, "dataset": dataset}, "cpu")
    return replace(job, data_root=str(data / "data"), run=run)


def run_name(arm: str, seed: int, seconds: float) -> str:
    return f"cond-{arm}-s{seed}-{seconds:.0f}s"


def run_arms(data: Path, judge: Judge, arms: list[str], seeds: int, seconds: float) -> list[dict]:
    runs = []
    for seed in range(seeds):  # seed-major: load from other work falls on both arms alike
        for arm in arms:
            values = ARMS[arm]
            result = train_model(
                preset_job(data, run_name(arm, seed, seconds), seed, seconds, **values)
            )
            record = {"arm": arm, "seed": seed, "steps": result["step"], "run": result["run"]}
            record["train_seconds"] = result["seconds"]
            record.update(judge.score(Path(result["checkpoint"])))
            runs.append(record)
            print(json.dumps(record), flush=True)
    return runs


def run_few(data: Path, judge: Judge, counts: list[int], seconds: float) -> list[dict]:
    """The first city cut to `count` train images, conditional, the preset's budget."""
    version, runs = judge.version, []
    strips, cls = load_split(version, "train")
    for count in counts:
        keep = (cls != 0) | (torch.cumsum(cls == 0, 0) <= count)
        job = preset_job(data, f"cond-few-{count}", 0, seconds, conditional="city")
        model = replace(job.model, resolution=version.resolution, classes=judge.cities)
        loader = replace(job.loader, city_temperature=FEW_TEMPERATURE)
        trainer = Trainer(job.train, model, resolve_accelerator("cpu"))
        batches = CachedBatches(strips[keep], cls[keep], len(judge.cities), loader,
                                batch_size=job.train.batch_size)  # fmt: skip
        run_dir = data / "data" / "runs" / f"cond-few-{count}"
        run_dir.mkdir(parents=True, exist_ok=True)
        extra = {"job": {**job.to_dict(), "model": model.as_dict()}, "dataset": version.version}
        checkpoint = fit(trainer, batches, Budget(minutes=job.minutes), run_dir,
                         LoopConfig(log_every=20), extra_state=extra)  # fmt: skip
        seen = (judge.train[judge.train_labels != 0], judge.train[judge.train_labels == 0][:count])
        train = torch.cat(seen)
        labels = torch.cat([judge.train_labels[judge.train_labels != 0],
                            torch.zeros(len(seen[1]), dtype=torch.int64)])  # fmt: skip
        score = judge.score(checkpoint, (train, labels))
        city = judge.cities[0]
        record = {
            "city": city,
            "train_images": count,
            "steps": trainer.step,
            "recognised": score["recognised_by_city"][city],
            "swd_ratio": round(score["swd_by_city"][city] / score["floor_by_city"][city], 2),
            "others_recognised": round(statistics.fmean(
                v for c, v in score["recognised_by_city"].items() if c != city), 3),
        }  # fmt: skip
        runs.append(record)
        print(json.dumps(record), flush=True)
    return runs


def summarise(runs: list[dict], chance: float) -> dict:
    """Per arm: mean and stdev over seeds of the per-city SWD mean, its floor ratio and,
    conditional, the recognition rate and its multiple of chance."""
    table = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        entry = {}
        for key in ("swd_city_mean", "swd_city_mean_ratio", "recognised", "steps"):
            values = [r[key] for r in mine if key in r]
            if values:
                entry[f"{key}_mean"] = round(statistics.fmean(values), 3)
                entry[f"{key}_stdev"] = (
                    round(statistics.stdev(values), 3) if len(values) > 1 else None
                )
        if "recognised_mean" in entry:
            entry["recognised_x_chance"] = round(entry["recognised_mean"] / chance, 2)
        table[arm] = entry
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("build/conditional"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--arms",
        default="unconditional,conditional",
        help=f"comma-separated, of: {', '.join(ARMS)} (the goal's two by default)",
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="training time per run")
    parser.add_argument("--few", default="", help="train images of the cut city, e.g. 8,32,96")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (benchmarks/quality.py THREADS_NOTE)"
    )
    parser.add_argument("--night-grid", type=Path, default=Path("docs/conditional-day-night.png"))
    parser.add_argument("--grid", type=Path, default=Path("docs/conditional-by-city.png"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conditional-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # quality.py's THREADS_NOTE: 1 on a shared box
    version = DatasetVersion(
        args.data / "data" / "datasets" / (args.data / "version").read_text().strip()
    )
    judge = Judge(version)
    arms = args.arms.split(",")
    if set(arms) - set(ARMS):
        parser.error(f"--arms: unknown {sorted(set(arms) - set(ARMS))}; known: {', '.join(ARMS)}")
    runs = run_arms(args.data, judge, arms, args.seeds, args.seconds)
    chance = 1 / len(judge.train_labels.unique())  # among the cities with train images
    first = next((r["run"] for r in runs if r["arm"] != "unconditional"), None)
    if first:
        G, _, _ = load_generator(args.data / "data" / "runs" / first / "checkpoint.pt")
        grid = real_vs_fake_by_city(G, version, args.grid, per_city=4)
        Image.open(grid).quantize(128).save(grid, optimize=True)  # small enough to commit
    night = next((r["run"] for r in runs if r["arm"] == "conditional-night"), None)
    if night:
        day_and_night_grid(args.data / "data" / "runs" / night / "checkpoint.pt", args.night_grid)
    few = run_few(args.data, judge, [int(n) for n in args.few.split(",") if n], args.seconds)
    result = {
        "benchmark": "conditional",
        "machine": {"cores": cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": "cpu",
                    "threads": args.threads,
                    "load_average_at_end": round(os.getloadavg()[0], 2)},
        "preset": preset_values("cpu"),
        "seconds_per_run": args.seconds,
        "cities": list(judge.cities),
        "chance": round(chance, 3),
        "val_images": len(judge.val),
        "train_images": len(judge.train),
        "classifier": {"val_accuracy": round(judge.val_accuracy, 3),
                       "seconds": judge.classifier_seconds},
        "protocol": "EMA G; len(val) images, every city in turn (conditional); SWD per city vs "
                    "that city's val images, floor train-of-city vs val-of-city; recognition "
                    "by a small CNN trained on the train split",
        "arms": summarise(runs, chance),
        "runs": runs,
        "few": {"temperature": FEW_TEMPERATURE, "runs": few},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["arms"], indent=2))


if __name__ == "__main__":
    main()
