from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from mura_monai.transforms import ResizeWithAspectPadD, ResizeWithAspectPadd, ResizeWithAspectPadDict


def make_data():
    img = np.ones((1, 100, 50), np.float32)
    return {"image": img, "mask": img.copy(), "name": "a"}


TEST_CASE_KEYS = [
    [{"keys": "image"}, ["image"]],
    [{"keys": ["image", "mask"], "mode": ("area", "nearest"), "pad_value": (0.5, 0.0)}, ["image", "mask"]],
    [{"keys": ["mask", "gone"], "allow_missing_keys": True}, ["mask"]],
]


@pytest.mark.parametrize("args, changed", TEST_CASE_KEYS)
def test_only_given_keys(args, changed):
    data = make_data()
    out = ResizeWithAspectPadd(spatial_size=64, **args)(data)
    for key in ("image", "mask"):
        if key in changed:
            assert out[key].shape == (1, 64, 64) and out[key][0, 32, 32] == 1.0
        else:
            assert out[key] is data[key]
    assert out["name"] == "a"


def test_per_key_pad_value_and_inverse():
    data = {k: MetaTensor(torch.ones(1, 100, 50)) for k in ("image", "mask")}
    xform = ResizeWithAspectPadd(["image", "mask"], spatial_size=64, mode=("area", "nearest"), pad_value=(0.5, 0.0))
    out = xform(data)
    assert float(out["image"][0, 0, 0]) == 0.5 and float(out["mask"][0, 0, 0]) == 0.0
    back = xform.inverse(out)
    assert back["image"].shape == (1, 100, 50) and back["mask"].shape == (1, 100, 50)


def test_aliases():
    assert ResizeWithAspectPadD is ResizeWithAspectPadd and ResizeWithAspectPadDict is ResizeWithAspectPadd
