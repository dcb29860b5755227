"""Training health, live: is D overpowering G, have the samples collapsed?

The loop reads these every log interval from the trainer's metrics (`logit_gap`,
`real_pos`, `real_diversity`) and `diversity`, the spread of a fixed latent batch of
EMA samples, and logs a `health` list of warnings that say what to try. A run like
the old CPU quickstart (BCE, width 16, batch 32, transposed G) trips both within its
first minute: D's logits reach about +6 / -6 and every sample is the same grey.
"""

from __future__ import annotations

import torch

from gan.losses import GanLoss

REAL_POS_WON = 0.95  # D calls nearly every real image real (ADA targets 0.6) ...
COLLAPSE_SHARE = 0.25  # samples spread less than a quarter as much as real images ...
COLLAPSE_AFTER = 100  # ... after this many steps: a transposed G starts near 0.06 (a
# real batch: ~0.39) and a healthy one leaves that by then; the CPU quickstart's grey
# G stayed under 0.03 for hundreds of steps
# What helps, each with the config value that says it is already in use, in the order
# measured (docs/QUALITY.md). Not offered: a lower lr_d, a narrower D and LeCam
# regularisation, which hold D back; each made the cpu preset's samples worse.
REMEDIES = (
    ("label_smoothing 0.1", lambda train, model: train.label_smoothing > 0),
    ("generator upsample", lambda train, model: model.generator == "upsample"),
    ("diffaugment translation,cutout", lambda train, model: bool(train.diffaugment)),
    ("ada_target 0.6", lambda train, model: train.ada_target > 0),
    ("lr_g 4x lr_d (TTUR)", lambda train, model: train.lr_g > train.lr_d),
    ("beta1 0 and beta2 0.99 with lr_g and lr_d doubled", lambda train, model: train.beta1 == 0),
)
REMEDY = "try " + ", ".join(name for name, _ in REMEDIES)
DONE = "every measured remedy is on; samples measured here kept improving under this flag"


def remedy(train, model) -> str:
    """What to try, leaving out what this run (TrainConfig, ModelConfig) already does."""
    left = [name for name, in_use in REMEDIES if not in_use(train, model)]
    return "try " + ", ".join(left) if left else DONE


def batch_spread(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] -> 0-d float32 tensor on their device: the mean over pixels of
    the (unbiased) std across the batch; no host sync, so the step can compute it.

    Written out as centre, square, sum: `Tensor.std(dim=0)` reduces the batch axis about
    4x slower on the CPU (1.9 vs 0.4 ms for 16 x 3 x 64 x 64, 2 threads), 4% of a
    cpu-preset step.
    """
    x = images.float()
    centred = x - x.mean(dim=0)
    return centred.square().sum(dim=0).div(x.shape[0] - 1).sqrt().mean()


def diversity(images: torch.Tensor) -> float:
    """float [B, 3, H, W] in [-1, 1] -> `batch_spread` as a float.

    0 when every image is the same (collapse, the uniform grey of a beaten G); real
    64 px street windows give about 0.4-0.5.
    """
    return batch_spread(images).item()


def health_warnings(
    metrics: dict[str, float], loss: GanLoss, step: int, advice: str = REMEDY
) -> list[str]:
    """The warnings one log interval's metrics, at generator step `step`, call for
    (empty when healthy), each ending in `advice` (`remedy` of the run's configs)."""
    warnings = []
    won = metrics["real_pos"] > REAL_POS_WON and metrics["logit_gap"] > loss.saturated_gap
    if won and loss.saturated_gap > 0:  # a WGAN critic's values have no such scale
        warnings.append(
            f"D is overpowering G (real logits > 0: {metrics['real_pos']:.0%}, logit gap "
            f"{metrics['logit_gap']:.1f}): G gets little gradient; {advice}"
        )
    spread = metrics["diversity"] / max(metrics["real_diversity"], 1e-8)
    if step >= COLLAPSE_AFTER and spread < COLLAPSE_SHARE:
        warnings.append(
            f"samples collapsed (diversity {metrics['diversity']:.3f} vs real "
            f"{metrics['real_diversity']:.3f}); {advice}"
        )
    return warnings
