from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import IntensityRescale
from tests.transforms.output_checks import TYPES, assert_transform_output


def ramp() -> np.ndarray:
    """101 grey levels 0.00, 0.01, ..., 1.00: percentile p is exactly p / 100."""
    return (np.arange(101, dtype=np.float32) / 100).reshape(1, 1, 101)


TEST_CASE_SHAPES = [
    [{}, (1, 32, 32)],
    [{"lower": 5, "upper": 95}, (3, 16, 24)],
    [{"lower": 0, "upper": 100, "channel_wise": True}, (3, 16, 16)],
]


@pytest.mark.parametrize("in_type", TYPES)
@pytest.mark.parametrize("args, shape", TEST_CASE_SHAPES)
def test_shape_dtype_type(in_type, args, shape):
    img = in_type(np.random.default_rng(0).random(shape))  # float64 in, float32 out
    out = IntensityRescale(**args)(img)
    assert_transform_output(out, img, shape)


TEST_CASE_RAMP = [
    [10, 90, {0.1: 0.0, 0.9: 1.0, 0.5: 0.5, 0.0: 0.0, 1.0: 1.0}],
    [0, 50, {0.0: 0.0, 0.25: 0.5, 0.5: 1.0, 0.75: 1.0}],
]


@pytest.mark.parametrize("lower, upper, mapping", TEST_CASE_RAMP)
def test_maps_percentiles_to_0_and_1(lower, upper, mapping):
    img = ramp()
    out = IntensityRescale(lower, upper)(img)
    for value, expected in mapping.items():
        np.testing.assert_allclose(out[0, 0, int(round(value * 100))], expected, atol=1e-5)


def test_random_image_percentiles():
    img = np.random.default_rng(1).random((1, 64, 64)).astype(np.float32) * 0.5 + 0.2
    out = IntensityRescale(2, 98)(img)
    lo, hi = np.percentile(img, [2, 98])
    np.testing.assert_allclose(out[img <= lo], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[img >= hi], 1.0, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_channel_wise():
    img = np.stack([ramp()[0] * 0.5, ramp()[0] * 0.5 + 0.5])
    per_image = IntensityRescale(0, 100)(img)
    per_channel = IntensityRescale(0, 100, channel_wise=True)(img)
    np.testing.assert_allclose(per_channel[0], per_channel[1], atol=1e-6)
    assert per_image[0].max() < 0.51 and per_image[1].min() > 0.49


@pytest.mark.parametrize("lower, upper", [(-1, 99), (1, 101), (50, 50), (90, 10)])
def test_bad_percentiles(lower, upper):
    with pytest.raises(ValueError):
        IntensityRescale(lower, upper)
