"""Evaluation metrics behind a registry, as stylegan2-ada's `metric_main.py`.

Add a metric = add a function of `EvalInputs` returning a JSON-ready dict, decorated
`@register_metric("name")`; the name states the protocol (`swd_val`: generated images
against the val split). A metric that cannot be computed returns
`{"computed": False, "reason": ...}`, never a made-up number. Pure torch: no Prefect,
no MLflow. docs/EVALUATION.md says what every number means.

Images are uint8 [N, 3, R, R] (the centre RxR window of a stored strip).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MetricFn = Callable[["EvalInputs"], dict]
_METRICS: dict[str, MetricFn] = {}

NO_INCEPTION = "not computed: no Inception weights given (--inception-weights PATH)"


@dataclass
class EvalInputs:
    """What every metric may use. Tensors live on the CPU; `device` is where to compute."""

    generated: torch.Tensor  # uint8 [N, 3, R, R], from the EMA generator
    val: torch.Tensor  # uint8 [M, 3, R, R], the val split (the reference)
    train: torch.Tensor  # uint8 [T, 3, R, R], a sample of the train split
    val_labels: torch.Tensor | None = None  # int64 [M] city index
    train_labels: torch.Tensor | None = None  # int64 [T] city index
    generated_labels: torch.Tensor | None = None  # int64 [N]: the city asked for (conditional)
    city_names: tuple[str, ...] = ()  # dataset.json's cities: label i is city_names[i]
    val_groups: torch.Tensor | None = None  # int64 [M] sequence id; None: probe splits by index
    discriminator: nn.Module | None = None  # the trained D, eval mode
    random_discriminator: nn.Module | None = None  # same architecture, DCGAN init
    inception_weights: Path | None = None  # a local torch-fidelity InceptionV3 state_dict
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)  # shared work between metrics


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: make `fn(inputs) -> dict` available as metric `name`."""

    def add(fn: MetricFn) -> MetricFn:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        _METRICS[name] = fn
        return fn

    return add


def metric_names() -> list[str]:
    """Registered metric names, in registration order."""
    return list(_METRICS)


def compute_metric(name: str, inputs: EvalInputs) -> dict:
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(_METRICS)}")
    return _METRICS[name](inputs)


def not_computed(reason: str) -> dict:
    return {"computed": False, "reason": reason}


# ---------------------------------------------------------------- sliced Wasserstein (ProGAN)

SWD_PATCH = 7  # neighbourhood side
SWD_PATCHES = 128  # neighbourhoods per image per level
SWD_REPEATS = 4
SWD_DIRECTIONS = 128  # per repeat
SWD_MIN_RESOLUTION = 16
SWD_MAX_IMAGES = 8192  # per set: 75 KB of descriptors per image per level (~616 MB)
_PROJECTION_BUDGET = 2**25  # floats of projections held at once per set (128 MB)
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
BINOMIAL_5X5 = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0


def swd_resolutions(size: int) -> list[int]:
    """Pyramid levels' sizes: size, size/2, ... down to 16 px (64 -> [64, 32, 16])."""
    levels = []
    while size >= SWD_MIN_RESOLUTION:
        levels.append(size)
        size //= 2
    return levels


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 5x5 convolution with mirrored edges (scipy's mode="mirror")."""
    weight = kernel.to(x).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=x.shape[1])


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur with the 5x5 binomial and drop every other row and column (cv2.pyrDown)."""
    return _filter(x, BINOMIAL_5X5)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels and blur with 4x the binomial (cv2.pyrUp)."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _filter(up, BINOMIAL_5X5 * 4.0)


def laplacian_level(images: torch.Tensor, level: int, levels: int) -> torch.Tensor:
    """float [B, 3, R/2^level, ...]: one level of the Laplacian pyramid of raw 0-255 values.

    The last level (`levels - 1`) is the low-pass residual itself, as in ProGAN.
    """
    gaussian = images.float()
    for _ in range(level):
        gaussian = pyr_down(gaussian)
    if level == levels - 1:
        return gaussian
    return gaussian - pyr_up(pyr_down(gaussian))


def _seeded(seed: int, *salt: int) -> torch.Generator:
    value = seed
    for s in salt:
        value = value * 1_000_003 + s
    return torch.Generator().manual_seed(value % (2**63))


def patch_centres(n: int, size: int, seed: int, level: int, which: int) -> torch.Tensor:
    """int64 [n * 128, 2] (y, x) centres of 7x7 neighbourhoods lying wholly inside the image.

    Drawn once per (seed, level, which set), so a result does not depend on batch size.
    """
    half = SWD_PATCH // 2
    generator = _seeded(seed, level, which)
    return torch.randint(half, size - half, (n * SWD_PATCHES, 2), generator=generator)


def swd_directions(dim: int, seed: int, level: int) -> torch.Tensor:
    """float [4, dim, 128]: random unit directions, per repeat."""
    generator = _seeded(seed, level, 7)
    directions = torch.randn(SWD_REPEATS, dim, SWD_DIRECTIONS, generator=generator)
    return directions / directions.norm(dim=1, keepdim=True)


def extract_patches(level: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """float [B, 3, h, w] and [B*128, 2] centres -> float [B*128, 3, 7, 7]."""
    half = SWD_PATCH // 2
    offsets = torch.arange(-half, half + 1, device=level.device)
    image = torch.arange(level.shape[0], device=level.device).repeat_interleave(SWD_PATCHES)
    ys = (centres[:, 0, None] + offsets)[:, None, :, None]
    xs = (centres[:, 1, None] + offsets)[:, None, None, :]
    channels = torch.arange(level.shape[1], device=level.device)[None, :, None, None]
    return level[image[:, None, None, None], channels, ys, xs]


def swd_descriptors(
    images: torch.Tensor, level: int, seed: int, which: int, device: torch.device, batch: int = 256
) -> torch.Tensor:
    """float [N*128, 147] on `device`: the level's neighbourhoods, each channel normalised
    by the whole set's own mean and std (ProGAN's `finalize_descriptors`)."""
    levels = len(swd_resolutions(images.shape[-1]))
    size = images.shape[-1] >> level
    centres = patch_centres(len(images), size, seed, level, which).to(device)
    parts = []
    for start in range(0, len(images), batch):
        part = laplacian_level(images[start : start + batch].to(device), level, levels)
        rows = slice(start * SWD_PATCHES, (start + len(part)) * SWD_PATCHES)
        parts.append(extract_patches(part, centres[rows]))
    descriptors = torch.cat(parts)
    std, mean = torch.std_mean(descriptors, dim=(0, 2, 3), keepdim=True, correction=0)
    descriptors.sub_(mean).div_(std.clamp_min(1e-8))
    return descriptors.flatten(1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean over repeats, directions and ranks of |sorted(a @ d) - sorted(b @ d)|.

    a, b: float [N, D] (equal N); directions: float [repeats, D, k]. Directions are
    projected a chunk at a time, so projections never exceed 128 MB per set.
    """
    if a.shape != b.shape:
        raise ValueError(f"descriptor sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    repeats = []
    chunk_size = max(1, min(directions.shape[2], _PROJECTION_BUDGET // max(len(a), 1)))
    for dirs in directions.to(a.device):
        total = 0.0
        for chunk in dirs.split(chunk_size, dim=1):
            pa, pb = _sorted_columns(a @ chunk), _sorted_columns(b @ chunk)
            total += float((pa - pb).abs().sum(dtype=torch.float64))
        repeats.append(total / (a.shape[0] * dirs.shape[1]))
    return sum(repeats) / len(repeats)


def _sorted_columns(x: torch.Tensor) -> torch.Tensor:
    """float [N, k] -> [k, N]: each column sorted, as a row.

    numpy sorts ~20x faster than torch on the CPU (torch 2.14, 2 cores).
    """
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.T.contiguous().numpy(), axis=1))
    return torch.sort(x.T, dim=1).values


def swd(
    a: torch.Tensor, b: torch.Tensor, seed: int = 0, device: str | torch.device = "cpu"
) -> dict:
    """Sliced Wasserstein distance x 1e3 between image sets a and b (uint8 [N,3,R,R]).

    Returns {"levels": {"64": ..., "32": ..., "16": ...}, "mean": ...}. Each level is
    computed and freed before the next: memory is ~2 x N x 75 KB.
    """
    if a.shape != b.shape:
        raise ValueError(f"SWD needs equal-sized sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    device = torch.device(device)
    levels = {}
    for level, resolution in enumerate(swd_resolutions(a.shape[-1])):
        da = swd_descriptors(a, level, seed, 0, device)
        db = swd_descriptors(b, level, seed, 1, device)
        directions = swd_directions(da.shape[1], seed, level)
        levels[str(resolution)] = 1e3 * sliced_wasserstein(da, db, directions)
        del da, db
    return {"levels": levels, "mean": sum(levels.values()) / len(levels)}


def _subsample(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(images) <= n:
        return images
    order = torch.randperm(len(images), generator=_seeded(seed, 11))[:n]
    return images[order.sort().values]


@register_metric("swd_val")
def swd_val(inputs: EvalInputs) -> dict:
    """SWD generated-vs-val, and the real-vs-real floor (train sample vs val) beside it."""
    n = min(len(inputs.generated), len(inputs.val), len(inputs.train), SWD_MAX_IMAGES)
    if n < 1 or inputs.val.shape[-1] < SWD_MIN_RESOLUTION:
        return not_computed("not computed: needs images of at least 16 px in every set")
    val = _subsample(inputs.val, n, inputs.seed)
    ours = swd(inputs.generated[:n], val, inputs.seed, inputs.device)
    floor = swd(_subsample(inputs.train, n, inputs.seed + 1), val, inputs.seed, inputs.device)
    return {
        "computed": True,
        "images": n,
        "levels": ours["levels"],
        "mean": ours["mean"],
        "floor_levels": floor["levels"],
        "floor_mean": floor["mean"],
        "ratio": ours["mean"] / floor["mean"] if floor["mean"] > 0 else None,
    }


# ---------------------------------------------------------------- FID and KID (torchmetrics)


def check_inception_weights(path: Path) -> str:
    """sha256 of a usable weights file; ValueError with one clear line otherwise.

    Loaded here with weights_only=True first: torch-fidelity itself loads the file with
    weights_only=False, which would run any code pickled into it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such Inception weights file; pass a local .pth state_dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure means the same to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a plain Inception state_dict ({first})") from None
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError(
            f"{path}: not a torch-fidelity InceptionV3 state_dict (pt_inception-2015-12-05)"
        )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inception(inputs: EvalInputs) -> dict:
    """FID and KID in one pass over both sets; cached for the two metrics."""
    if "inception" in inputs.cache:
        return inputs.cache["inception"]
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    path = Path(inputs.inception_weights)
    digest = check_inception_weights(path)
    n = min(len(inputs.generated), len(inputs.val))
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    with warnings.catch_warnings():  # "saves all features": n x 2048 floats, known and fine
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=fid.inception, subset_size=min(1000, n), subsets=100)
    fid, kid = fid.to(inputs.device), kid.to(inputs.device)
    val = _subsample(inputs.val, n, inputs.seed)
    for images, real in ((val, True), (inputs.generated[:n], False)):
        for chunk in images.split(64):
            chunk = chunk.to(inputs.device)
            fid.update(chunk, real=real)
            kid.update(chunk, real=real)
    kid_mean, kid_std = kid.compute()
    facts = {"computed": True, "images": n, "weights": path.name, "weights_sha256": digest}
    result = {
        "fid": {**facts, "value": float(fid.compute())},
        "kid": {**facts, "value": float(kid_mean), "std": float(kid_std), "subset": min(1000, n)},
    }
    inputs.cache["inception"] = result
    return result


@register_metric("fid_val")
def fid_val(inputs: EvalInputs) -> dict:
    """Fréchet Inception distance, generated vs val (2048-d pool features)."""
    if inputs.inception_weights is None:
        return not_computed(NO_INCEPTION)
    return _inception(inputs)["fid"]


@register_metric("kid_val")
def kid_val(inputs: EvalInputs) -> dict:
    """Kernel Inception distance (cubic polynomial kernel MMD), generated vs val."""
    if inputs.inception_weights is None:
        return not_computed(NO_INCEPTION)
    return _inception(inputs)["kid"]


# ---------------------------------------------------------------- linear probe of D (DCGAN)


@torch.no_grad()
def extract_features(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 256
) -> torch.Tensor:
    """float [N, F] on the CPU: `model.features` of uint8 images mapped to [-1, 1]."""
    parts = []
    for chunk in images.split(batch):
        x = chunk.to(device).float().div_(127.5).sub_(1.0)
        parts.append(model.features(x).float().cpu())
    return torch.cat(parts)


def probe_split(labels: torch.Tensor, groups: torch.Tensor | None, seed: int = 0) -> torch.Tensor:
    """bool [M]: True = probe-train, False = probe-test, about half each per class.

    With groups (sequence ids) a whole sequence goes to one side, so near-duplicate
    frames never leak across; each class's sequences, in a seeded random order, go to
    whichever side holds fewer of that class's images. Without, alternate indices.
    """
    if groups is None:
        return torch.arange(len(labels)) % 2 == 0
    train = torch.zeros(len(labels), dtype=torch.bool)
    generator = _seeded(seed, 13)
    for cls in labels.unique().tolist():
        members = labels == cls
        ids = groups[members].unique()
        ids = ids[torch.randperm(len(ids), generator=generator)]
        sizes = [0, 0]
        for group in ids.tolist():
            rows = members & (groups == group)
            side = 0 if sizes[0] <= sizes[1] else 1
            sizes[side] += int(rows.sum())
            if side == 0:
                train |= rows
    return train


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    steps: int = 200,
    weight_decay: float = 1e-3,
) -> float:
    """Test accuracy of multinomial logistic regression fit by full-batch L-BFGS.

    Features are standardised by the training half's mean and std; L2 penalty
    `weight_decay * ||W||^2` on the mean cross-entropy.
    """
    mean, std = train_x.mean(0), train_x.std(0, correction=0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = (test_x @ weight + bias).argmax(1)
    return float((predicted == test_y).float().mean())


def probe_features(
    features: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None, seed: int = 0
) -> dict:
    """Probe accuracy on one feature set, with the chance and majority-class baselines."""
    train = probe_split(labels, groups, seed)
    test = ~train
    if train.sum() < 2 or test.sum() < 1:
        return not_computed("not computed: too few val images for a probe-train/test split")
    accuracy = linear_probe(features[train], labels[train], features[test], labels[test])
    majority = int(labels[train].bincount().argmax())
    return {
        "accuracy": accuracy,
        "chance": 1.0 / len(labels.unique()),
        "majority": float((labels[test] == majority).float().mean()),
        "train_images": int(train.sum()),
        "test_images": int(test.sum()),
    }


@register_metric("probe_city")
def probe_city(inputs: EvalInputs) -> dict:
    """Linear probe on frozen D.features predicting the city, vs the same on a random D."""
    if inputs.discriminator is None or inputs.val_labels is None:
        return not_computed("not computed: needs the discriminator and val city labels")
    labels = inputs.val_labels.cpu()
    if len(labels.unique()) < 2:
        return not_computed("not computed: the val split holds fewer than 2 cities")
    trained = probe_features(
        extract_features(inputs.discriminator, inputs.val, inputs.device),
        labels, inputs.val_groups, inputs.seed,
    )  # fmt: skip
    if trained.get("computed") is False:
        return trained
    result = {"computed": True, **trained, "classes": len(labels.unique())}
    result["split"] = "sequence" if inputs.val_groups is not None else "index"
    if inputs.random_discriminator is not None:
        random = probe_features(
            extract_features(inputs.random_discriminator, inputs.val, inputs.device),
            labels, inputs.val_groups, inputs.seed,
        )  # fmt: skip
        result["random_d_accuracy"] = random["accuracy"]
    return result


# ---------------------------------------------------------------- memorisation and diversity

PIXEL_FEATURE_SIZE = 16  # images compared as 16x16 area-downsampled RGB in [0, 1] (768-d)
DIVERSITY_MAX_IMAGES = 1024


def pixel_features(images: torch.Tensor, size: int = PIXEL_FEATURE_SIZE) -> torch.Tensor:
    """uint8 [N, 3, R, R] -> float [N, 3*size*size]: area-downsampled pixels in [0, 1]."""
    parts = [
        F.interpolate(chunk.float() / 255.0, size=(size, size), mode="area").flatten(1)
        for chunk in images.split(1024)
    ]
    return torch.cat(parts) if parts else torch.empty(0, 3 * size * size)


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """float [Nq]: L2 distance from each query row to its nearest reference row."""
    best = []
    for chunk in queries.split(512):
        dist = torch.full((len(chunk),), float("inf"))
        for ref in reference.split(8192):
            dist = torch.minimum(dist, torch.cdist(chunk, ref).min(1).values)
        best.append(dist)
    return torch.cat(best)


def memorisation_stats(generated: torch.Tensor, val: torch.Tensor, train: torch.Tensor) -> dict:
    """Nearest-train distances of generated samples against those of val images (features)."""
    d_gen = nearest_distances(generated, train)
    d_val = nearest_distances(val, train)
    threshold = float(torch.quantile(d_val, 0.01))
    median_val = float(d_val.median())
    return {
        "computed": True,
        "feature_space": f"{PIXEL_FEATURE_SIZE}x{PIXEL_FEATURE_SIZE} RGB pixels, L2",
        "median_generated": float(d_gen.median()),
        "median_val": median_val,
        "ratio": float(d_gen.median()) / median_val if median_val > 0 else None,
        "val_p1": threshold,
        "fraction_below_val_p1": float((d_gen < threshold).float().mean()),
        "generated_images": len(generated),
        "val_images": len(val),
        "train_images": len(train),
    }


@register_metric("memorisation")
def memorisation(inputs: EvalInputs) -> dict:
    """Are samples closer to their nearest training image than fresh real (val) images are?"""
    if min(len(inputs.generated), len(inputs.val), len(inputs.train)) < 1:
        return not_computed("not computed: needs generated, val and train images")
    return memorisation_stats(
        pixel_features(inputs.generated), pixel_features(inputs.val), pixel_features(inputs.train)
    )


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of rows (float [N, D], N >= 2)."""
    return float(torch.pdist(features.double()).mean())


@register_metric("diversity")
def diversity(inputs: EvalInputs) -> dict:
    """Mean pairwise distance among samples against the same among val images."""
    n = min(len(inputs.generated), len(inputs.val), DIVERSITY_MAX_IMAGES)
    if n < 2:
        return not_computed("not computed: needs at least 2 generated and 2 val images")
    ours = mean_pairwise_distance(pixel_features(inputs.generated[:n]))
    real = mean_pairwise_distance(pixel_features(_subsample(inputs.val, n, inputs.seed)))
    return {
        "computed": True,
        "feature_space": f"{PIXEL_FEATURE_SIZE}x{PIXEL_FEATURE_SIZE} RGB pixels, L2",
        "images": n,
        "generated": ours,
        "val": real,
        "ratio": ours / real if real > 0 else None,
    }
