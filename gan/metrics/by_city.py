"""Metrics per condition: SWD per city, and how often a city classifier recognises the
city a conditional generator was asked for. Both register in the metric registry
(`gan.metrics` imports this module):

- `city_swd{n}_valwin`: for each city c, `swd_against_real` (one draw) of n / cities
  images generated for c against training-style windows of c's val strips, beside the
  floor of c's train windows against the same. An unconditional G cannot be asked for a
  city, so its first n / cities samples stand for every city: what a user asking it for
  c gets.
- `city_test{n}`: a small CNN trained on the centre windows of the train strips to tell
  the cities apart, then applied to the n generated images: the share recognised as the
  city each was drawn for (Shmelkov et al. 2018, "How good is my GAN?": GAN-test; Ravuri
  & Vinyals' CAS is the other direction), beside its accuracy on real val centre windows
  (what a perfect G could reach) and chance.

Generated images are uint8 [N, 3, R, R], real ones uint8 [M, 3, R, W] strips; labels are
int64 positions in dataset.json's city list (`EvalInputs.city_names`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gan.metrics.inputs import EvalInputs, not_computed
from gan.metrics.registry import register_metric
from gan.metrics.sliced_wasserstein import SWD_MIN_RESOLUTION, swd_against_real
from shards.geometry import centre_window

CLASSIFIER_SIDE = 32  # px: the classifier sees area-downsampled images (palette, layout)
CLASSIFIER_STEPS = 300  # Adam steps of batch CLASSIFIER_BATCH (~20 s on 2 CPU cores)
CLASSIFIER_BATCH = 64
# At most this many passes over the train sample: binds below 960 images (a smoke-test
# dataset), where 300 steps would go over each image hundreds of times.
CLASSIFIER_EPOCHS = 20
MIN_CITY_IMAGES = 2  # a city's SWD needs at least this many generated images


@register_metric("city_swd{n}_valwin")
def city_swd_valwin(inputs: EvalInputs) -> dict:
    """Per city: SWD generated-for-c vs val windows of c, and train windows of c vs the
    same (the floor); cities missing from the train or val strips are skipped."""
    if inputs.val_labels is None or inputs.train_labels is None or not inputs.city_names:
        return not_computed("not computed: needs city labels of the val and train strips")
    if inputs.val.shape[-2] < SWD_MIN_RESOLUTION:
        return not_computed("not computed: needs images of at least 16 px")
    per_city = inputs.samples // len(inputs.city_names)
    cities, skipped = {}, {}
    for city, name in enumerate(inputs.city_names):
        val = inputs.val[inputs.val_labels == city]
        train = inputs.train[inputs.train_labels == city]
        generated = inputs.generated[:per_city]
        if inputs.generated_labels is not None:
            generated = inputs.generated[inputs.generated_labels == city][:per_city]
        if not len(val) or not len(train) or len(generated) < MIN_CITY_IMAGES:
            skipped[name] = f"{len(val)} val, {len(train)} train, {len(generated)} generated"
            continue
        result = swd_against_real(generated, val, train, inputs.seed, inputs.device, draws=1)
        cities[name] = {k: result[k] for k in ("images", "mean", "floor_mean", "ratio")}
    if not cities:
        return not_computed("not computed: no city has val and train strips and 2 samples")
    ratios = [c["ratio"] for c in cities.values() if c["ratio"] is not None]
    return {
        "computed": True,
        "conditional": inputs.generated_labels is not None,
        "cities": cities,
        "skipped": skipped,
        "mean": sum(c["mean"] for c in cities.values()) / len(cities),
        "mean_ratio": sum(ratios) / len(ratios) if ratios else None,
    }


@register_metric("city_test{n}")
def city_test(inputs: EvalInputs) -> dict:
    """A city classifier trained on train images: its accuracy on real val images and on
    generated images of each requested city (a conditional G only), with chance. Cities
    without train images (held out whole) are left out of the generated side and chance."""
    if inputs.val_labels is None or inputs.train_labels is None:
        return not_computed("not computed: needs city labels of the val and train images")
    classes = int(max(inputs.train_labels.max(), inputs.val_labels.max())) + 1
    trained = inputs.train_labels.unique()  # held-out (ood) cities have no train images
    if len(trained) < 2:
        return not_computed("not computed: the train sample holds fewer than 2 cities")
    train, val = centre_window(inputs.train), centre_window(inputs.val)
    model = train_city_classifier(train, inputs.train_labels, classes, inputs.seed)
    real = predict_cities(model, val)
    result = {
        "computed": True,
        "classes": len(trained),
        "chance": 1.0 / len(trained),  # among the cities the classifier and G learned
        "val_accuracy": _accuracy(real, inputs.val_labels),
        "val_by_city": _by_city(inputs, real, inputs.val_labels),
        "train_images": len(inputs.train),
        "val_images": len(inputs.val),
    }
    if inputs.generated_labels is None:
        result["generated_accuracy"] = None
        result["reason"] = "generated images have no requested city (unconditional G)"
        return result
    asked = torch.isin(inputs.generated_labels, trained)  # not the cities nobody trained on
    fake = predict_cities(model, inputs.generated[asked])
    result["generated_accuracy"] = _accuracy(fake, inputs.generated_labels[asked])
    result["generated_by_city"] = _by_city(inputs, fake, inputs.generated_labels[asked])
    result["generated_images"] = int(asked.sum())
    return result


class CityClassifier(nn.Module):
    """uint8-derived float [B, 3, 32, 32] in [-1, 1] -> city logits [B, K]: three stride-2
    convs (16, 32, 64 channels) with BatchNorm and ReLU, global average pool, linear."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _prepare(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, R, R] -> float [N, 3, 32, 32] in [-1, 1] (area downsampling)."""
    x = images.float().div(127.5).sub(1.0)
    return F.adaptive_avg_pool2d(x, CLASSIFIER_SIDE) if x.shape[-1] != CLASSIFIER_SIDE else x


def train_city_classifier(
    images: torch.Tensor, labels: torch.Tensor, classes: int, seed: int = 0
) -> CityClassifier:
    """The classifier fit on `images` (uint8 [N, 3, R, R]) and `labels` (int64 [N]) with
    Adam for CLASSIFIER_STEPS seeded batches (fewer if that is over CLASSIFIER_EPOCHS
    passes over the N images), random horizontal flips; returned in eval mode on the CPU.
    Seeded: the same inputs give the same classifier."""
    generator = torch.Generator().manual_seed(seed + 17)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 17)
        model = CityClassifier(classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = _prepare(images), labels.cpu()
    steps = min(CLASSIFIER_STEPS, math.ceil(CLASSIFIER_EPOCHS * len(x) / CLASSIFIER_BATCH))
    with torch.enable_grad():
        for _ in range(steps):
            index = torch.randint(0, len(x), (CLASSIFIER_BATCH,), generator=generator)
            batch = x[index]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = F.cross_entropy(model(batch), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def predict_cities(model: CityClassifier, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The classifier's city, int64 [N], for uint8 images [N, 3, R, R]."""
    return torch.cat([model(_prepare(chunk)).argmax(1) for chunk in images.split(batch)])


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels.cpu()).float().mean())


def _by_city(inputs: EvalInputs, predicted: torch.Tensor, labels: torch.Tensor) -> dict:
    """{city name: share of its images classified as it}, for the cities in `labels`."""
    labels = labels.cpu()
    return {
        _city_name(inputs, c): _accuracy(predicted[labels == c], labels[labels == c])
        for c in labels.unique().tolist()
    }


def _city_name(inputs: EvalInputs, index: int) -> str:
    names = inputs.city_names
    return names[index] if index < len(names) else str(index)
