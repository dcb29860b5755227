"""Evaluation metrics on real tensors: SWD against a slow reference, the window protocol and
its floor, the registry, probe, copies, collapse."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan.images import strip_windows, training_windows
from gan.metrics import EvalConfig, EvalInputs, append_result, compute_metric, metric_names
from gan.metrics.inception import NO_INCEPTION
from gan.metrics.inputs import count_label
from gan.metrics.palette import PALETTE_KEYS
from gan.metrics.probe import probe_features, probe_split
from gan.metrics.registry import register_metric
from gan.metrics.sliced_wasserstein import (
    BINOMIAL_5X5,
    patch_centres,
    pyr_down,
    swd,
    swd_against_real,
    swd_directions,
    swd_resolutions,
)
from shards.geometry import centre_window
from tasks.verdicts import headline


def street_like(n: int, seed: int, size: int = 32, width: int | None = None) -> torch.Tensor:
    """uint8 [n,3,size,width]: smooth random colour fields plus fine noise (one distribution);
    width 2 * size makes the 2:1 strips the shards store."""
    width = width or size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 2, width // 2, generator=g)
    coarse = F.interpolate(coarse, size=(size, width), mode="bicubic").clamp(0, 1)
    fine = torch.rand(n, 3, size, width, generator=g)
    return (coarse * 249 + fine * 6).round().clamp(0, 255).to(torch.uint8)


def graded_strips(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 [n,3,size,2*size] strips bright on the left, dark on the right, as a street
    scene differs along its width: a strip's centre window is not its typical window."""
    ramp = torch.linspace(1.0, 0.2, 2 * size).expand(size, -1)
    return (street_like(n, seed, size, 2 * size).float() * ramp).round().to(torch.uint8)


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
    assert metric_names(2048) == [
        "swd2k_valwin", "fid2k_valwin", "kid2k_valwin", "probe_city", "memorisation", "diversity",
        "palette",
        "city_swd2k_valwin", "city_test2k",
    ]  # fmt: skip
    assert metric_names(500)[0] == "swd500_valwin" and count_label(50_000) == "50k"
    with pytest.raises(ValueError, match="unknown metric 'fid50k'; choose from swd2_valwin"):
        compute_metric("fid50k", EvalInputs(*(street_like(2, 0),) * 3))
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("diversity")(lambda inputs: {})


def test_eval_config_is_the_one_sample_count_and_rejects_bad_values():
    assert EvalConfig().samples == 2048
    with pytest.raises(ValueError, match="samples must be an integer >= 2"):
        EvalConfig(samples=1)


def test_each_result_is_appended_to_its_metric_jsonl(tmp_path):
    result = compute_metric("diversity", EvalInputs(street_like(8, 1), street_like(8, 2), None))
    append_result(tmp_path, "diversity", result, "run/checkpoint.pt", 10)
    path = append_result(tmp_path, "diversity", result, "run/checkpoint.pt", 20)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == "metric-diversity.jsonl" and [x["step"] for x in lines] == [10, 20]
    assert lines[0]["results"] == json.loads(json.dumps(result)) and lines[0]["timestamp"] > 0


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


def test_swd_of_a_set_against_itself_is_near_zero_and_noise_is_far():
    real = street_like(64, 1)
    same = swd(real, real)["mean"]  # only the random patch positions differ: sampling noise
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(2))
    assert same < 0.5 * swd(real, noise.to(torch.uint8))["mean"]


def test_training_windows_are_shifted_mirrored_crops_of_the_strips():
    strips = street_like(5, 3, 16, 32)
    windows = training_windows(strips, 40, seed=4)
    assert windows.shape == (40, 3, 16, 16) and torch.equal(
        windows, training_windows(strips, 40, 4)
    )
    crops = {  # every window of every strip, and its mirror image
        bytes(w.flip(-1).numpy() if m else w.numpy())
        for s in strips
        for x in range(17)
        for w in [s[..., x : x + 16]]
        for m in (False, True)
    }
    assert all(bytes(w.numpy()) in crops for w in windows)
    assert len({bytes(w.numpy()) for w in windows}) > 20  # shifts and flips, not one crop


def test_swd_valwin_scores_real_windows_as_real_and_noise_far_beyond_the_floor():
    val, train = graded_strips(24, 1), graded_strips(64, 2)
    result = swd_against_real(training_windows(graded_strips(64, 3), 48, 5), val, train)
    assert result["draws"] == 3 and len(result["floor_draws"]) == 3
    spread = result["floor_std"] / result["floor_mean"]
    assert spread > 0 and result["ratio_as_real"] == pytest.approx(1 + 2 * spread)
    assert result["ratio"] < 1.5  # fresh real windows sit near the floor (48 images: noisy)
    assert set(result["levels"]) == set(result["floor_levels"]) == {"32", "16"}
    noise = torch.randint(0, 256, (48, 3, 32, 32), generator=torch.Generator().manual_seed(6))
    noisy = swd_against_real(noise.to(torch.uint8), val, train)
    assert noisy["ratio"] > 2 and noisy["mean"] > noisy["floor_mean"] + 5 * noisy["floor_std"]


def test_centre_windows_are_not_what_training_draws():
    """The old protocol's fault: a generator of perfect training windows scored far above
    a floor made of centre crops, so "near the floor" was out of reach by construction."""
    val, train = graded_strips(24, 1), graded_strips(64, 2)
    perfect = training_windows(graded_strips(64, 3), 48, 5)
    val_centres = centre_window(val[torch.arange(48) % len(val)]).contiguous()
    train_centres = centre_window(train[:48]).contiguous()
    old_ratio = swd(perfect, val_centres)["mean"] / swd(train_centres, val_centres)["mean"]
    new_ratio = swd_against_real(perfect, val, train)["ratio"]
    assert old_ratio > 1.3 and new_ratio < old_ratio / 1.2


def test_swd_metric_is_named_for_its_count_and_reports_the_floor_beside_ours():
    val, train = street_like(24, 1, 32, 64), street_like(24, 2, 32, 64)
    inputs = EvalInputs(blurred(street_like(24, 3), 3), val, train)
    result = compute_metric("swd24_valwin", inputs)
    assert result["computed"] and result["images"] == 24
    assert result["floor_mean"] < result["mean"]
    assert result["ratio"] == pytest.approx(result["mean"] / result["floor_mean"])


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
    train, val = street_like(200, 10, 32, 64), street_like(100, 11, 32, 64)
    copies = strip_windows(train[:60])[:, 5]  # the right window, mirrored
    copies = compute_metric("memorisation", EvalInputs(copies, val, train))
    fresh = compute_metric("memorisation", EvalInputs(street_like(100, 12), val, train))
    assert copies["ratio"] < 0.05 and copies["fraction_below_val_p1"] == 1.0
    assert 0.85 < fresh["ratio"] < 1.15 and fresh["fraction_below_val_p1"] < 0.05


def test_diversity_of_identical_images_is_zero():
    val = street_like(256, 20)
    same = street_like(1, 21).expand(64, -1, -1, -1)
    assert compute_metric("diversity", EvalInputs(same, val, val))["ratio"] < 1e-6
    fresh = compute_metric("diversity", EvalInputs(street_like(64, 22), val, val))["ratio"]
    assert 0.9 < fresh < 1.1


def about_grey(images: torch.Tensor, factor: float) -> torch.Tensor:
    """`images` with every value's distance from mid-grey times `factor`: contrast and
    chroma both scale by it, as a whole batch of over- or under-saturated samples would."""
    return ((images.float() - 127.5) * factor + 127.5).round().clamp(0, 255).to(torch.uint8)


def test_palette_names_samples_more_saturated_or_greyer_than_real():
    val, train = street_like(256, 30), street_like(256, 31)
    real = compute_metric("palette", EvalInputs(street_like(128, 32), val, train))
    flat = compute_metric("palette", EvalInputs(about_grey(street_like(128, 32), 0.7), val, train))
    loud = compute_metric("palette", EvalInputs(street_like(128, 32), about_grey(val, 0.6), train))
    for key in PALETTE_KEYS:
        assert 0.95 < real[key]["ratio"] < 1.05
        assert flat[key]["ratio"] == pytest.approx(0.7 * real[key]["ratio"], rel=0.03)
        assert loud[key]["ratio"] == pytest.approx(real[key]["ratio"] / 0.6, rel=0.03)
    assert flat["ratio"] < 0.75 and loud["ratio"] > 1.6
    [(name, value, reference, verdict)] = headline({"palette": loud})
    assert (name, value, reference) == ("palette", loud["ratio"], 1.0)
    both = (
        r"more contrast than real \(contrast 1\.6\dx\); "
        r"more saturated than real \(chroma 1\.6\dx\)"
    )
    assert re.fullmatch(both, verdict), verdict
    both = r"flatter than real \(contrast 0\.\d\dx\); greyer than real \(chroma 0\.\d\dx\)"
    assert re.fullmatch(both, headline({"palette": flat})[0][3])
    assert headline({"palette": real})[0][3] == "ok"


def test_palette_of_grey_samples_is_greyer_than_real():
    grey = street_like(64, 33).float().mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    inputs = EvalInputs(grey.to(torch.uint8), street_like(64, 34), street_like(64, 35))
    result = compute_metric("palette", inputs)
    assert result["chroma"]["generated"] < 0.01 and result["ratio"] == result["chroma"]["ratio"]
    assert "greyer than real (chroma 0.0" in headline({"palette": result})[0][3]
    flat = compute_metric("palette", EvalInputs(street_like(8, 36), inputs.generated, inputs.val))
    assert flat["computed"] is False and "val windows are flat grey" in flat["reason"]
    assert headline({"palette": flat}) == []


# ---------------------------------------------------------------- FID and KID


def test_fid_and_kid_are_not_computed_without_inception_weights():
    inputs = EvalInputs(*(street_like(4, 0),) * 3)
    for name in ("fid4_valwin", "kid4_valwin"):
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
    fid, kid = compute_metric("fid4_valwin", inputs), compute_metric("kid4_valwin", inputs)
    for result in (fid, kid):
        assert result["computed"] and result["images"] == 4 and np.isfinite(result["value"])
        assert len(result["weights_sha256"]) == 64
    assert kid["subset"] == 4 and "std" in kid
