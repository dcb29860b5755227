"""msls-train refuses bad parameters in one line, before it downloads or writes anything."""

from __future__ import annotations

import pytest

from flows.train import train

CASES = [
    ({"steps": -5}, r"steps must be >= 0"),
    ({"batch_size": 0}, r"batch_size"),
    ({"ngf": -8}, r"ngf"),
    ({"resolution": 96}, r"resolution must be one of"),
    ({"device": "tpu"}, r"unknown device 'tpu'"),
    ({"loss": "l2"}, r"unknown loss 'l2'"),
    ({"holdout_cities": ("atlantis",)}, r"holdout_cities: unknown city 'atlantis'"),
    ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
    ({"minutes": -1.0}, r"minutes"),
    ({"synthetic_images": 0}, r"n_images"),
    ({"cache": "ssd"}, r"cache"),
]


@pytest.mark.parametrize(("params", "message"), CASES, ids=[next(iter(c[0])) for c in CASES])
def test_bad_parameters_fail_before_any_work(tmp_path, params, message):
    with pytest.raises(ValueError, match=message) as error:
        train.fn(data_root=str(tmp_path), **params)
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())
