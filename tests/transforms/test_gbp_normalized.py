from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import GBPNormalizeD, GBPNormalized, GBPNormalizeDict


def make_data():
    img = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    return {"image": img, "saliency": img.copy()}


TEST_CASE_KEYS = [
    [{"keys": "saliency"}, ["saliency"]],
    [{"keys": ["image", "saliency"]}, ["image", "saliency"]],
    [{"keys": ["image", "gone"], "allow_missing_keys": True}, ["image"]],
]


@pytest.mark.parametrize("args, changed", TEST_CASE_KEYS)
def test_only_given_keys(args, changed):
    data = make_data()
    out = GBPNormalized(**args)(data)
    for key in ("image", "saliency"):
        if key in changed:
            np.testing.assert_allclose([out[key].mean(), out[key].std()], [0.5, 0.5], atol=1e-5)
        else:
            assert out[key] is data[key]


def test_aliases():
    assert GBPNormalizeD is GBPNormalized and GBPNormalizeDict is GBPNormalized
