from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from mura_monai.transforms import ResizeWithAspectPad
from tests.transforms.output_checks import TYPES, assert_transform_output

TEST_CASE_SHAPES = [
    [{"spatial_size": 64}, (1, 100, 50), (1, 64, 64)],
    [{"spatial_size": 32, "mode": "bilinear"}, (3, 40, 80), (3, 32, 32)],
    [{"spatial_size": 48, "mode": "nearest"}, (1, 16, 16), (1, 48, 48)],  # upsampling
]


@pytest.mark.parametrize("in_type", TYPES)
@pytest.mark.parametrize("args, in_shape, out_shape", TEST_CASE_SHAPES)
def test_shape_dtype_type(in_type, args, in_shape, out_shape):
    img = in_type(np.random.default_rng(0).random(in_shape))
    out = ResizeWithAspectPad(**args)(img)
    assert_transform_output(out, img, out_shape, unit_range=False)


TEST_CASE_ASPECT = [
    # (H, W), pad value, bright region of the 64 x 64 output
    [(100, 50), 0.0, (slice(0, 64), slice(16, 48))],  # tall: 64 x 32 in the middle, padded left/right
    [(50, 100), 0.0, (slice(16, 48), slice(0, 64))],  # wide: 32 x 64, padded top/bottom
    [(100, 50), 0.25, (slice(0, 64), slice(16, 48))],
]


@pytest.mark.parametrize("in_type", TYPES)
@pytest.mark.parametrize("hw, pad_value, bright", TEST_CASE_ASPECT)
def test_keeps_aspect_and_pads(in_type, hw, pad_value, bright):
    out = ResizeWithAspectPad(64, pad_value=pad_value)(in_type(np.ones((1, *hw), np.float32)))
    out = np.asarray(out)[0]
    mask = np.zeros((64, 64), bool)
    mask[bright] = True
    np.testing.assert_allclose(out[mask], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[~mask], pad_value, atol=1e-6)


def test_metatensor_inverse():
    img = MetaTensor(torch.rand(1, 100, 50), meta={"filename_or_obj": "x.png"})
    xform = ResizeWithAspectPad(64)
    out = xform(img)
    assert isinstance(out, MetaTensor) and len(out.applied_operations) == 2
    back = xform.inverse(out)
    assert isinstance(back, MetaTensor) and back.shape == (1, 100, 50) and not back.applied_operations
    composed = Compose([xform])
    assert composed.inverse(composed(img)).shape == (1, 100, 50)
    with pytest.raises(ValueError):
        xform.inverse(np.zeros((1, 64, 64), np.float32))


@pytest.mark.parametrize("size", [0, -5, (64, 64), 64.0, True])
def test_bad_size(size):
    with pytest.raises(ValueError):
        ResizeWithAspectPad(size)
