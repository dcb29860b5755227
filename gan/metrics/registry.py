"""The metric registry, as stylegan2-ada's `metrics/metric_main.py`.

Add a metric = add a function of `EvalInputs` returning a JSON-ready dict, decorated
`@register_metric(name)`. The name states the protocol; `{n}` in it stands for the image
count (`swd{n}_valwin` at 2048 images is `swd2k_valwin`: 2,048 generated images against
as many windows of the val split). A metric that cannot be computed returns
`not_computed(reason)`, never a made-up number. Each result can be appended as one JSON
line to `metric-<name>.jsonl` in the run directory, with the snapshot it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from gan.metrics.copies import diversity_stats, memorisation_stats
from gan.metrics.inception import NO_INCEPTION, inception_distances
from gan.metrics.inputs import EvalInputs, count_label, not_computed, real_windows
from gan.metrics.palette import palette_stats
from gan.metrics.probe import extract_features, probe_features
from gan.metrics.sliced_wasserstein import SWD_MIN_RESOLUTION, swd_against_real
from shards.atomic import write_text
from shards.geometry import centre_window

MetricFn = Callable[[EvalInputs], dict]
_METRICS: dict[str, MetricFn] = {}  # name template -> function


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: make `fn(inputs) -> dict` available as metric `name` ({n}: image count)."""

    def add(fn: MetricFn) -> MetricFn:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        _METRICS[name] = fn
        return fn

    return add


def metric_names(samples: int) -> list[str]:
    """Registered metric names at `samples` generated images, in registration order."""
    return [template.format(n=count_label(samples)) for template in _METRICS]


def compute_metric(name: str, inputs: EvalInputs) -> dict:
    """Run metric `name` (as `metric_names(inputs.samples)` spells it) on `inputs`."""
    by_name = dict(zip(metric_names(inputs.samples), _METRICS.values(), strict=True))
    if name not in by_name:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(by_name)}")
    return by_name[name](inputs)


def append_result(run_dir: Path, name: str, result: dict, snapshot: str, step: int) -> Path:
    """Add one line to run_dir/metric-<name>.jsonl (rewritten atomically: never torn)."""
    path = Path(run_dir) / f"metric-{name}.jsonl"
    line = {"metric": name, "results": result, "snapshot": snapshot, "step": step}
    line["timestamp"] = time.time()
    before = path.read_text() if path.is_file() else ""
    write_text(path, before + json.dumps(line) + "\n")
    return path


@register_metric("swd{n}_valwin")
def swd_valwin(inputs: EvalInputs) -> dict:
    """SWD of generated images against training-style val windows, beside its floor."""
    if inputs.samples < 1 or inputs.val.shape[-2] < SWD_MIN_RESOLUTION:
        return not_computed("not computed: needs images of at least 16 px in every set")
    result = swd_against_real(
        inputs.generated, inputs.val, inputs.train, inputs.seed, inputs.device
    )
    return {"computed": True, **result}


def _inception(inputs: EvalInputs, which: str) -> dict:
    """FID or KID; both come from one pass, cached for the other."""
    if inputs.inception_weights is None:
        return not_computed(NO_INCEPTION)
    if "inception" not in inputs.cache:
        inputs.cache["inception"] = inception_distances(
            inputs.generated, inputs.val_windows(), inputs.inception_weights, inputs.device
        )
    return inputs.cache["inception"][which]


@register_metric("fid{n}_valwin")
def fid_valwin(inputs: EvalInputs) -> dict:
    """Fréchet Inception distance (2048-d pool features), generated vs val windows."""
    return _inception(inputs, "fid")


@register_metric("kid{n}_valwin")
def kid_valwin(inputs: EvalInputs) -> dict:
    """Kernel Inception distance (cubic polynomial kernel MMD), generated vs val windows."""
    return _inception(inputs, "kid")


@register_metric("probe_city")
def probe_city(inputs: EvalInputs) -> dict:
    """Linear probe on frozen D.features of val centre windows predicting the city,
    against the same on a random D."""
    if inputs.discriminator is None or inputs.val_labels is None:
        return not_computed("not computed: needs the discriminator and val city labels")
    labels = inputs.val_labels.cpu()
    if len(labels.unique()) < 2:
        return not_computed("not computed: the val split holds fewer than 2 cities")
    images = centre_window(inputs.val)

    def probe(model) -> dict:
        features = extract_features(model, images, inputs.device)
        return probe_features(features, labels, inputs.val_groups, inputs.seed)

    trained = probe(inputs.discriminator)
    if trained.get("computed") is False:
        return trained
    result = {"computed": True, **trained, "classes": len(labels.unique())}
    result["split"] = "sequence" if inputs.val_groups is not None else "index"
    if inputs.random_discriminator is not None:
        result["random_d_accuracy"] = probe(inputs.random_discriminator)["accuracy"]
    return result


@register_metric("memorisation")
def memorisation(inputs: EvalInputs) -> dict:
    """Samples' nearest-train distances against val windows' (6 windows per train strip)."""
    if min(inputs.samples, len(inputs.val), len(inputs.train)) < 1:
        return not_computed("not computed: needs generated, val and train images")
    return memorisation_stats(inputs.generated, inputs.val_windows(), inputs.train)


@register_metric("diversity")
def diversity(inputs: EvalInputs) -> dict:
    """Mean pairwise distance among samples against the same among val windows."""
    if min(inputs.samples, len(inputs.val)) < 2:
        return not_computed("not computed: needs at least 2 generated and 2 val images")
    return diversity_stats(inputs.generated, inputs.val_windows())


@register_metric("palette")
def palette(inputs: EvalInputs) -> dict:
    """Median contrast and chroma of samples against val windows (and train windows')."""
    if min(inputs.samples, len(inputs.val), len(inputs.train)) < 1:
        return not_computed("not computed: needs generated, val and train images")
    train = real_windows(inputs.train, inputs.samples, "train", inputs.seed, 0)
    return palette_stats(inputs.generated, inputs.val_windows(), train)
