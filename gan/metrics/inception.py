"""Fréchet and kernel Inception distance (torchmetrics) from a local weights file only.

Nothing is fetched at run time: the user names a torch-fidelity InceptionV3 state_dict
(pt_inception-2015-12-05-6726825d.pth), checked here with weights_only=True first.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

NO_INCEPTION = "not computed: no Inception weights given (--inception-weights PATH)"
KID_SUBSET = 1000  # images per KID subset, at most
KID_SUBSETS = 100


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


def inception_distances(
    generated: torch.Tensor, real: torch.Tensor, weights: Path, device: torch.device
) -> dict:
    """{"fid": {...}, "kid": {...}} of two uint8 [N,3,R,R] sets, in one pass over both."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    path = Path(weights)
    digest = check_inception_weights(path)
    n = min(len(generated), len(real))
    subset = min(KID_SUBSET, n)
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    with warnings.catch_warnings():  # "saves all features": n x 2048 floats, known and fine
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(
            feature=fid.inception, subset_size=subset, subsets=KID_SUBSETS
        )
    fid, kid = fid.to(device), kid.to(device)
    for images, is_real in ((real[:n], True), (generated[:n], False)):
        for chunk in images.split(64):
            chunk = chunk.to(device)
            fid.update(chunk, real=is_real)
            kid.update(chunk, real=is_real)
    kid_mean, kid_std = kid.compute()
    facts = {"computed": True, "images": n, "weights": path.name, "weights_sha256": digest}
    return {
        "fid": {**facts, "value": float(fid.compute())},
        "kid": {**facts, "value": float(kid_mean), "std": float(kid_std), "subset": subset},
    }
