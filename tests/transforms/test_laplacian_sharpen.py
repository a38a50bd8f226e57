from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import LaplacianSharpen
from tests.transforms.output_checks import TYPES, assert_transform_output


def soft_edge(channels: int = 1, size: int = 32) -> np.ndarray:
    """A blurred vertical edge: a linear ramp from 0.3 to 0.7 over 8 columns."""
    row = np.interp(np.arange(size), [12, 20], [0.3, 0.7]).astype(np.float32)
    return np.broadcast_to(row, (channels, size, size)).copy()


def gradient_energy(img) -> float:
    return float((np.diff(np.asarray(img), axis=-1) ** 2).sum())


TEST_CASE_SHAPES = [[{"strength": s}, shape] for s in (0.0, 1.5, 3.0) for shape in [(1, 32, 32), (3, 20, 28)]]


@pytest.mark.parametrize("in_type", TYPES)
@pytest.mark.parametrize("args, shape", TEST_CASE_SHAPES)
def test_shape_dtype_type(in_type, args, shape):
    img = in_type(np.random.default_rng(0).random(shape, dtype=np.float32))
    out = LaplacianSharpen(**args)(img)
    assert_transform_output(out, img, shape)


@pytest.mark.parametrize("in_type", TYPES)
def test_zero_strength_is_identity(in_type):
    arr = np.random.default_rng(1).random((3, 16, 16), dtype=np.float32)
    out = LaplacianSharpen(strength=0)(in_type(arr))
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_stronger_sharpens_more():
    img = soft_edge()
    energies = [gradient_energy(LaplacianSharpen(s)(img)) for s in (0.0, 1.5, 3.0)]
    assert energies[0] < energies[1] < energies[2]


def test_formula_and_clip():
    img = soft_edge()
    out = LaplacianSharpen(1.5, ksize=1)(img)[0]
    lap = np.zeros_like(img[0])
    lap[:, 1:-1] = img[0, :, :-2] + img[0, :, 2:] - 2 * img[0, :, 1:-1]  # rows are constant: only d2/dx2
    expected = np.clip(img[0] - 1.5 * lap, 0, 1)
    np.testing.assert_allclose(out[:, 1:-1], expected[:, 1:-1], atol=1e-6)
    hard = np.zeros((1, 16, 16), np.float32)
    hard[..., 8:] = 1.0
    out = LaplacianSharpen(3.0)(hard)
    assert out.min() == 0.0 and out.max() == 1.0  # overshoot clipped


@pytest.mark.parametrize("args", [{"strength": -1.0}, {"ksize": 2}])
def test_bad_args(args):
    with pytest.raises(ValueError):
        LaplacianSharpen(**args)
