"""Evaluation metrics on real tensors: SWD against a slow reference, probe, copies, collapse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan.metrics import (
    BINOMIAL_5X5,
    NO_INCEPTION,
    EvalInputs,
    compute_metric,
    metric_names,
    patch_centres,
    probe_features,
    probe_split,
    pyr_down,
    swd,
    swd_directions,
    swd_resolutions,
)


def street_like(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 [n,3,size,size]: smooth random colour fields plus fine noise (one distribution)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 2, size // 2, generator=g)
    coarse = F.interpolate(coarse, size=size, mode="bicubic").clamp(0, 1)
    fine = torch.rand(n, 3, size, size, generator=g)
    return (coarse * 249 + fine * 6).round().clamp(0, 255).to(torch.uint8)


def blurred(images: torch.Tensor, times: int) -> torch.Tensor:
    x = images.float()
    weight = BINOMIAL_5X5.expand(3, 1, 5, 5)
    for _ in range(times):
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=3)
    return x.round().clamp(0, 255).to(torch.uint8)


def noisy(images: torch.Tensor, sigma: float) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(5)) * sigma
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def test_registry_names_state_their_protocol():
    import gan.city_metrics  # noqa: F401  (the per-city metrics register on import)

    assert metric_names() == [
        "swd_val", "fid_val", "kid_val", "probe_city", "memorisation", "diversity",
        "swd_city_val", "city_test",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric("fid50k", EvalInputs(*(street_like(2, 0),) * 3))


# ---------------------------------------------------------------- SWD


def test_swd_is_small_within_a_distribution_and_grows_with_blur_and_noise():
    a, b = street_like(48, 1), street_like(48, 2)
    same = swd(a, b)["mean"]
    blur = [swd(a, blurred(b, k))["mean"] for k in (2, 4, 8)]
    noise = [swd(a, noisy(b, s))["mean"] for s in (32, 64, 128)]
    # "near zero" = near the floor that sampling 48 x 128 patches leaves (~20 here)
    assert same < 0.6 * blur[0]
    assert blur[0] < blur[1] < blur[2]
    assert same < noise[0] < noise[1] < noise[2]


def test_swd_levels_go_down_to_16_px():
    assert swd_resolutions(64) == [64, 32, 16]
    assert swd_resolutions(128) == [128, 64, 32, 16]
    assert list(swd(street_like(4, 0, 64), street_like(4, 1, 64))["levels"]) == ["64", "32", "16"]


def _reference_blur(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """5x5 convolution with mirrored edges, as a plain sum of 25 shifted copies."""
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    out = np.zeros_like(x)
    h, w = x.shape[2:]
    for dy in range(5):
        for dx in range(5):
            out += kernel[dy, dx] * padded[:, :, dy : dy + h, dx : dx + w]
    return out


def _reference_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """ProGAN's generate_laplacian_pyramid, with numpy loops instead of scipy."""
    kernel = BINOMIAL_5X5.numpy().astype(np.float64)
    pyramid = [images.astype(np.float64)]
    for _ in range(1, levels):
        down = _reference_blur(pyramid[-1], kernel)[:, :, ::2, ::2]
        up = np.zeros_like(pyramid[-1])
        up[:, :, ::2, ::2] = down
        pyramid[-1] = pyramid[-1] - _reference_blur(up, kernel * 4)
        pyramid.append(down)
    return pyramid


def _reference_swd(a: torch.Tensor, b: torch.Tensor, seed: int) -> list[float]:
    """ProGAN's sliced_wasserstein.py step by step, one direction at a time; shares only
    the random patch centres and directions (same seeds) with gan.metrics."""
    levels = len(swd_resolutions(a.shape[-1]))
    pyramids = [_reference_pyramid(x.numpy(), levels) for x in (a, b)]
    result = []
    for level in range(levels):
        descriptors = []
        for which, pyramid in enumerate(pyramids):
            image = pyramid[level]
            centres = patch_centres(len(image), image.shape[-1], seed, level, which).numpy()
            desc = np.stack(
                [
                    image[i // 128, :, y - 3 : y + 4, x - 3 : x + 4]
                    for i, (y, x) in enumerate(centres)
                ]
            )
            desc = desc - desc.mean(axis=(0, 2, 3), keepdims=True)
            desc = desc / desc.std(axis=(0, 2, 3), keepdims=True)
            descriptors.append(desc.reshape(len(desc), -1))
        directions = swd_directions(147, seed, level).numpy().astype(np.float64)
        repeats = []
        for repeat in directions:
            per_direction = []
            for j in range(repeat.shape[1]):
                pa = np.sort(descriptors[0] @ repeat[:, j])
                pb = np.sort(descriptors[1] @ repeat[:, j])
                per_direction.append(np.mean(np.abs(pa - pb)))
            repeats.append(np.mean(per_direction))
        result.append(1e3 * float(np.mean(repeats)))
    return result


def test_swd_matches_a_slow_reference_implementation():
    a, b = street_like(3, 7), blurred(street_like(3, 8), 1)
    ours = swd(a, b, seed=3)
    reference = _reference_swd(a, b, seed=3)
    assert list(ours["levels"].values()) == pytest.approx(reference, rel=2e-3)
    assert ours["mean"] == pytest.approx(np.mean(reference), rel=2e-3)


def test_pyr_down_matches_scipy_mirror_convolution():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = street_like(2, 3).float()
    expected = ndimage.convolve(x.numpy(), BINOMIAL_5X5.numpy()[None, None], mode="mirror")
    assert torch.allclose(pyr_down(x), torch.from_numpy(expected[:, :, ::2, ::2]), atol=1e-3)


def test_swd_val_reports_the_real_floor_beside_ours():
    val, train = street_like(24, 1), street_like(24, 2)
    result = compute_metric("swd_val", EvalInputs(blurred(street_like(24, 3), 3), val, train))
    assert result["computed"] and result["images"] == 24
    assert result["floor_mean"] < result["mean"]
    assert result["ratio"] == pytest.approx(result["mean"] / result["floor_mean"])
    assert set(result["levels"]) == set(result["floor_levels"]) == {"32", "16"}


# ---------------------------------------------------------------- probe


def _classes(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def test_probe_beats_chance_on_features_that_carry_the_class():
    labels = _classes(300, 4, 0)
    g = torch.Generator().manual_seed(1)
    features = F.one_hot(labels, 4).float() @ torch.randn(4, 64, generator=g) * 2
    features += torch.randn(300, 64, generator=g)
    result = probe_features(features, labels, groups=None)
    assert result["chance"] == 0.25
    assert result["accuracy"] > 0.9


def test_probe_is_near_chance_on_random_labels():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(400, 64, generator=g)
    result = probe_features(features, _classes(400, 4, 3), groups=None)
    assert abs(result["accuracy"] - 0.25) < 0.12


def test_probe_split_keeps_each_sequence_on_one_side():
    labels = _classes(200, 3, 4)
    groups = torch.arange(200) // 5 + 100 * labels  # 5-frame sequences within a city
    train = probe_split(labels, groups)
    for group in groups.unique():
        assert train[groups == group].unique().numel() == 1
    for cls in range(3):
        share = train[labels == cls].float().mean()
        assert 0.3 < share < 0.7


# ---------------------------------------------------------------- memorisation and diversity


def test_memorisation_flags_copies_and_not_fresh_samples():
    train, val = street_like(200, 10), street_like(100, 11)
    copies = compute_metric("memorisation", EvalInputs(train[:60], val, train))
    fresh = compute_metric("memorisation", EvalInputs(street_like(100, 12), val, train))
    assert copies["ratio"] < 0.05 and copies["fraction_below_val_p1"] == 1.0
    assert 0.85 < fresh["ratio"] < 1.15 and fresh["fraction_below_val_p1"] < 0.05


def test_diversity_of_identical_images_is_zero():
    val = street_like(64, 20)
    same = street_like(1, 21).expand(64, -1, -1, -1)
    assert compute_metric("diversity", EvalInputs(same, val, val))["ratio"] < 1e-6
    fresh = compute_metric("diversity", EvalInputs(street_like(64, 22), val, val))["ratio"]
    assert 0.9 < fresh < 1.1


# ---------------------------------------------------------------- FID and KID


def test_fid_and_kid_are_not_computed_without_inception_weights():
    inputs = EvalInputs(*(street_like(4, 0),) * 3)
    for name in ("fid_val", "kid_val"):
        assert compute_metric(name, inputs) == {"computed": False, "reason": NO_INCEPTION}
    assert NO_INCEPTION == "not computed: no Inception weights given (--inception-weights PATH)"


@pytest.mark.slow
def test_fid_and_kid_run_offline_from_a_local_weights_file(tmp_path, monkeypatch):
    """A randomly initialised torch-fidelity InceptionV3 saved locally stands in for the real
    weights: the numbers mean nothing, the code path (load, extract, compute) is real."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as patch:  # build once without weights, then save them
        patch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        network = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "pt_inception.pth"
    torch.save(network.state_dict(), weights)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download Inception weights")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    inputs = EvalInputs(
        street_like(4, 1, 64),
        street_like(4, 2, 64),
        street_like(4, 3, 64),
        inception_weights=weights,
    )
    fid, kid = compute_metric("fid_val", inputs), compute_metric("kid_val", inputs)
    for result in (fid, kid):
        assert result["computed"] and result["images"] == 4 and np.isfinite(result["value"])
        assert len(result["weights_sha256"]) == 64
    assert kid["subset"] == 4 and "std" in kid
