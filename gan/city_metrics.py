"""Metrics per condition: SWD per city, and how often a city classifier recognises the
city a conditional generator was asked for.

Both register in `gan.metrics`' registry (imported for that by tasks/evaluate.py):

- `swd_city_val`: for each city c, SWD of the images generated for c against val images
  of c, beside the floor of train images of c against the same val images. An
  unconditional G cannot be asked for a city, so its per-city SWD compares all its
  samples with each city's val images: what a user asking it for c gets.
- `city_test`: a small CNN trained on (a sample of) the train split to tell the cities
  apart, then applied to generated images of each requested city: the share recognised
  as that city (Shmelkov et al. 2018, "How good is my GAN?": GAN-test; Ravuri & Vinyals'
  CAS is the other direction, train on generated and test on real), beside the same
  classifier's accuracy on real val images (what a perfect G could reach) and chance.

Images are uint8 [N, 3, R, R]; labels int64 [N] positions in dataset.json's city list.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan.metrics import (
    SWD_MAX_IMAGES,
    SWD_MIN_RESOLUTION,
    EvalInputs,
    _subsample,
    not_computed,
    register_metric,
    swd,
)

CLASSIFIER_SIDE = 32  # px: the classifier sees area-downsampled images (palette, layout)
CLASSIFIER_STEPS = 300  # Adam steps of batch CLASSIFIER_BATCH (~20 s on 2 CPU cores)
CLASSIFIER_BATCH = 64
MIN_CITY_IMAGES = 2  # a city's SWD needs at least this many images in every set


@register_metric("swd_city_val")
def swd_city_val(inputs: EvalInputs) -> dict:
    """Per city: SWD generated-for-c vs val-of-c, and train-of-c vs val-of-c (the floor)."""
    if inputs.val_labels is None or inputs.train_labels is None:
        return not_computed("not computed: needs city labels of the val and train images")
    if inputs.val.shape[-1] < SWD_MIN_RESOLUTION:
        return not_computed("not computed: needs images of at least 16 px")
    cities, skipped = {}, {}
    for city in inputs.val_labels.unique().tolist():
        val = inputs.val[inputs.val_labels == city]
        train = inputs.train[inputs.train_labels == city]
        generated = inputs.generated
        if inputs.generated_labels is not None:
            generated = generated[inputs.generated_labels == city]
        n = min(len(val), len(train), len(generated), SWD_MAX_IMAGES)
        name = _city_name(inputs, city)
        if n < MIN_CITY_IMAGES:
            skipped[name] = f"{n} images in its smallest set"
            continue
        val = _subsample(val, n, inputs.seed)
        ours = swd(_subsample(generated, n, inputs.seed + 2), val, inputs.seed, inputs.device)
        floor = swd(_subsample(train, n, inputs.seed + 1), val, inputs.seed, inputs.device)
        cities[name] = {
            "images": n,
            "mean": ours["mean"],
            "floor_mean": floor["mean"],
            "ratio": ours["mean"] / floor["mean"] if floor["mean"] > 0 else None,
        }
    if not cities:
        return not_computed("not computed: no city has 2 images in every set")
    ratios = [c["ratio"] for c in cities.values() if c["ratio"] is not None]
    return {
        "computed": True,
        "conditional": inputs.generated_labels is not None,
        "cities": cities,
        "skipped": skipped,
        "mean": sum(c["mean"] for c in cities.values()) / len(cities),
        "mean_ratio": sum(ratios) / len(ratios) if ratios else None,
    }


@register_metric("city_test")
def city_test(inputs: EvalInputs) -> dict:
    """A city classifier trained on train images: its accuracy on real val images and on
    generated images of each requested city (a conditional G only), with chance."""
    if inputs.val_labels is None or inputs.train_labels is None:
        return not_computed("not computed: needs city labels of the val and train images")
    classes = int(max(inputs.train_labels.max(), inputs.val_labels.max())) + 1
    if len(inputs.train_labels.unique()) < 2:
        return not_computed("not computed: the train sample holds fewer than 2 cities")
    model = train_city_classifier(inputs.train, inputs.train_labels, classes, inputs.seed)
    real = predict_cities(model, inputs.val)
    result = {
        "computed": True,
        "classes": classes,
        "chance": 1.0 / classes,
        "val_accuracy": _accuracy(real, inputs.val_labels),
        "val_by_city": _by_city(inputs, real, inputs.val_labels),
        "train_images": len(inputs.train),
        "val_images": len(inputs.val),
    }
    if inputs.generated_labels is None:
        result["generated_accuracy"] = None
        result["reason"] = "generated images have no requested city (unconditional G)"
        return result
    fake = predict_cities(model, inputs.generated)
    result["generated_accuracy"] = _accuracy(fake, inputs.generated_labels)
    result["generated_by_city"] = _by_city(inputs, fake, inputs.generated_labels)
    result["generated_images"] = len(inputs.generated)
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
    Adam for CLASSIFIER_STEPS seeded batches, random horizontal flips; returned in eval
    mode on the CPU. Seeded: the same inputs give the same classifier."""
    generator = torch.Generator().manual_seed(seed + 17)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 17)
        model = CityClassifier(classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = _prepare(images), labels.cpu()
    with torch.enable_grad():
        for _ in range(CLASSIFIER_STEPS):
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
