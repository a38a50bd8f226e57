from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_monai.transforms import (
    IntensityRescale,
    RandIntensityRescaleD,
    RandIntensityRescaled,
    RandIntensityRescaleDict,
)


def make_data():
    img = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    return {"image": img, "other": img.copy(), "skip": img.copy()}


TEST_CASE_KEYS = [
    [{"keys": "image"}, ["image"]],
    [{"keys": ["image", "other"]}, ["image", "other"]],
    [{"keys": ["other", "gone"], "allow_missing_keys": True}, ["other"]],
]


@pytest.mark.parametrize("args, changed", TEST_CASE_KEYS)
def test_only_given_keys_same_draw(args, changed):
    data = make_data()
    xform = RandIntensityRescaled(prob=1.0, lower_range=(0, 20), upper_range=(80, 100), **args)
    out = xform.set_random_state(seed=3)(data)
    lower, upper = xform.rescaler.lower, xform.rescaler.upper
    expected = IntensityRescale(lower, upper)(data["image"])
    for key in ("image", "other", "skip"):
        if key in changed:
            np.testing.assert_allclose(out[key], expected, atol=1e-6)  # all keys share one draw
        else:
            assert out[key] is data[key]


def test_reproducible():
    data = make_data()
    a = RandIntensityRescaled("image", prob=0.5).set_random_state(seed=11)
    b = RandIntensityRescaled("image", prob=0.5).set_random_state(seed=11)
    for _ in range(4):
        np.testing.assert_array_equal(a(data)["image"], b(data)["image"])


def test_prob_zero_keeps_type():
    out = RandIntensityRescaled("image", prob=0.0)({"image": torch.rand(1, 8, 8, dtype=torch.float64)})
    assert isinstance(out["image"], torch.Tensor) and out["image"].dtype == torch.float32


def test_aliases():
    assert RandIntensityRescaleD is RandIntensityRescaled and RandIntensityRescaleDict is RandIntensityRescaled
