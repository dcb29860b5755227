"""Linear probe of D's features (Radford et al. 2016, the DCGAN paper's feature test).

Frozen `D.features` of val images; a multinomial logistic regression predicts the city,
on halves of the val split that never share a sequence. A random D of the same
architecture is the baseline: random convolutions already carry colour statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan.metrics.inputs import not_computed, seeded


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
    generator = seeded(seed, 13)
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
