"""Named presets: whole configurations chosen once, selectable everywhere by name.

A preset is a set of option values (names as in `--help`) laid over the defaults; what
a user sets explicitly (a flag, a flow parameter, a key of `--config job.yaml`) wins
over the preset. The CLI, the flows, prefect.yaml and the quickstart select presets by
name instead of repeating numbers.

- `dcgan`: Radford et al. (2015) as pytorch/examples runs it: the defaults of every
  config (ngf = ndf = 64, batch 128, Adam 2e-4 / beta1 0.5, non-saturating BCE,
  transposed-conv G) for pytorch/examples' 25 epochs. For faithful reproduction.
- `cpu`: the configuration measured best at equal wall-clock on a 2-core CPU
  (benchmarks/quality.py, results/quality-cpu-ttur.json, arm
  smooth-upsample-ada-tc-b16-ttur): width 16, batch 16, one-sided label smoothing 0.1,
  the upsample+conv G, DiffAugment translation and cutout under ADA (target 0.6), and
  TTUR with G four times faster than D (lr_g 8e-4, lr_d 2e-4); what the quickstart runs.
  G's faster rate is the largest single gain found (one seed: 4.46 -> 2.95x the SWD
  floor); dropping DiffAugment's colour transform keeps the photos' palette visible to D
  (4.46 -> 4.15 alone, 2.93 with the faster G over 3 seeds). In the sweep on quiet
  cores: 2.80 ± 0.22x over 3 seeds (2.58-3.02) against 4.26 ± 0.13x for the preset
  before (DiffAugment with colour, one learning rate), and no run flagged "D is
  overpowering G" (2 of 3 before were). Given 5 minutes: 2.22 ± 0.17x against 3.31
  (results/quality-cpu-300s-ttur.json, quality-cpu-300s-ada-b16.json); 2.24 ± 0.21x with
  the EMA's BatchNorm statistics from 64 batches (quality-cpu-300s-bn64.json). It trains for
  2,400 generator steps, not minutes: what 2 minutes (the top of the issue's "1.5-2 minute"
  quickstart budget) bought on the AVX-512 cores of the sweeps (2,422-2,590 steps), where
  one-seed runs of 120 s scored 2.47 / 2.27 / 2.61x. An AVX2-only 2-core EPYC steps 2.3x
  slower: 2 minutes there bought ~1,240 steps and 3.91 ± 0.32x with noisy, checkered
  samples (quality-cpu-120s-avx2.json), 2,400 steps 2.67 ± 0.16x in 3.7 minutes
  (quality-cpu-2400steps-avx2.json). A step budget gives every CPU the same model.
- `gpu`: the paper's width at batch 256 (the CUDA-graphed step is not launch-bound
  there), label smoothing 0.1 and the upsample+conv G (the CPU sweep's winners), plus
  DiffAugment: measured on an H200 at equal wall-clock (benchmarks/gpu.py, 35 s an arm,
  2 seeds; results/gpu-h200.json) it reached 1.12-1.18x the SWD floor, against
  1.19-1.39 without it, 1.73-1.77 with the paper's transposed G (faster: 84k vs 47k
  images/s at batch 1024) and 2.29-2.56 for the pytorch/examples recipe. The CPU
  sweep's later finding (G four times faster than D, no colour transform) is not
  carried over: no GPU was lent to measure it at this width and batch.
- `auto` (the default): `gpu` when the job's device resolves to an accelerator, else `cpu`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "dcgan": {"epochs": 25.0},
    "cpu": {
        "ngf": 16,
        "ndf": 16,
        "batch_size": 16,
        "label_smoothing": 0.1,
        "generator": "upsample",
        "lr_g": 8e-4,
        "diffaugment": "translation,cutout",
        "ada_target": 0.6,
        "steps": 2400,
        "log_every": 20,
    },
    "gpu": {
        "batch_size": 256,
        "label_smoothing": 0.1,
        "generator": "upsample",
        "diffaugment": "color,translation,cutout",
        "minutes": 10.0,
        "log_every": 100,
        "sample_every": 500,
    },
}
PRESET_NAMES = ("auto", *PRESETS)


def preset_values(name: str, device: str = "auto") -> dict[str, Any]:
    """The option values of preset `name`; ValueError (one line) for an unknown name."""
    if name == "auto":
        from gan.accelerators import resolve_accelerator

        name = "cpu" if resolve_accelerator(device).kind == "cpu" else "gpu"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[name])


BUDGET = ("steps", "epochs", "minutes")


def with_preset(name: str, values: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    """`values` over preset `name`, keeping only the preset's options in `known`.

    A budget given explicitly replaces the preset's whole budget: `--minutes 5` on the
    cpu preset means 5 minutes, not "5 minutes or 2,400 steps, whichever comes first".
    """
    base = preset_values(name, values.get("device", "auto"))
    if any(values.get(k) for k in BUDGET):
        base = {k: v for k, v in base.items() if k not in BUDGET}
    return {**{k: v for k, v in base.items() if k in known}, **values}
