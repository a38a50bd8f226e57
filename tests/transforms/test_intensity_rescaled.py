from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import IntensityRescale, IntensityRescaleD, IntensityRescaled, IntensityRescaleDict


def make_data():
    img = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32) * 0.5
    return {"image": img, "other": img.copy()}


TEST_CASE_KEYS = [
    [{"keys": "image", "lower": 5, "upper": 95}, ["image"]],
    [{"keys": ["image", "other"]}, ["image", "other"]],
    [{"keys": ["other", "gone"], "allow_missing_keys": True}, ["other"]],
]


@pytest.mark.parametrize("args, changed", TEST_CASE_KEYS)
def test_only_given_keys(args, changed):
    data = make_data()
    out = IntensityRescaled(**args)(data)
    expected = IntensityRescale(args.get("lower", 1.0), args.get("upper", 99.0))(data["image"])
    for key in ("image", "other"):
        if key in changed:
            np.testing.assert_allclose(out[key], expected)
        else:
            assert out[key] is data[key]


def test_aliases():
    assert IntensityRescaleD is IntensityRescaled and IntensityRescaleDict is IntensityRescaled
