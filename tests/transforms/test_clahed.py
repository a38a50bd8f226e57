from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_monai.transforms import Clahe, ClaheD, Clahed, ClaheDict


def make_data():
    rng = np.random.default_rng(0)
    img = (0.45 + 0.1 * rng.random((1, 32, 32))).astype(np.float32)
    return {"image": img, "other": img.copy(), "label": 1}


TEST_CASE_KEYS = [
    [{"keys": "image"}, ["image"]],
    [{"keys": ["image", "other"]}, ["image", "other"]],
    [{"keys": ["image", "missing"], "allow_missing_keys": True}, ["image"]],
]


@pytest.mark.parametrize("args, changed", TEST_CASE_KEYS)
def test_only_given_keys(args, changed):
    data = make_data()
    out = Clahed(**args)(data)
    expected = Clahe()(data["image"])
    for key in ("image", "other"):
        if key in changed:
            np.testing.assert_allclose(out[key], expected)
        else:
            assert out[key] is data[key]
    assert out["label"] == 1
    assert "missing" not in out


def test_missing_key_raises():
    with pytest.raises(KeyError):
        Clahed(keys="missing")(make_data())


def test_torch_and_aliases():
    out = ClaheD(keys="image", clip_limit=3.0)({"image": torch.rand(3, 16, 16)})
    assert isinstance(out["image"], torch.Tensor) and out["image"].shape == (3, 16, 16)
    assert ClaheD is Clahed and ClaheDict is Clahed
