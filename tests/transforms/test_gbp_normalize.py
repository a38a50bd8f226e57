from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import GBPNormalize
from tests.transforms.output_checks import TYPES, assert_transform_output

TEST_CASE_SHAPES = [[{}, (1, 32, 32)], [{}, (3, 16, 24)], [{"clip": True}, (3, 16, 16)]]


@pytest.mark.parametrize("in_type", TYPES)
@pytest.mark.parametrize("args, shape", TEST_CASE_SHAPES)
def test_shape_dtype_type(in_type, args, shape):
    img = in_type(np.random.default_rng(0).random(shape))
    out = GBPNormalize(**args)(img)
    assert_transform_output(out, img, shape, unit_range=False)


@pytest.mark.parametrize("in_type", TYPES)
def test_mean_and_std_half(in_type):
    rng = np.random.default_rng(1)
    arr = np.stack([rng.random((32, 32)) * 0.2, rng.random((32, 32)) * 0.5 + 0.5, rng.random((32, 32))])
    out = np.asarray(GBPNormalize()(in_type(arr)))
    np.testing.assert_allclose(out.mean(), 0.5, atol=1e-5)
    np.testing.assert_allclose(out.std(), 0.5, atol=1e-5)
    # one mean/std for the whole image: channel order of brightness is kept, channels not equalised
    means = out.mean(axis=(1, 2))
    assert means[0] < means[2] < means[1]


def test_constant_image():
    out = GBPNormalize()(np.full((3, 8, 8), 0.7, np.float32))
    np.testing.assert_array_equal(out, 0.5)


def test_clip():
    arr = np.zeros((1, 10, 10), np.float32)
    arr[0, 0, 0] = 1.0  # one outlier: 0.5 + 0.5 * 9.95 ~ 5.5 unclipped
    assert GBPNormalize()(arr).max() > 1.0
    clipped = GBPNormalize(clip=True)(arr)
    assert clipped.min() >= 0.0 and clipped.max() == 1.0
