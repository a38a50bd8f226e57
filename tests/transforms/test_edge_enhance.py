from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import EdgeEnhance
from tests.transforms.output_checks import TYPES, assert_transform_output

METHODS = ["sobel", "prewitt", "roberts", "canny"]


def step_edge(channels: int = 1, size: int = 32) -> np.ndarray:
    """Dark left half (0.2), bright right half (0.8): one vertical edge at column size // 2."""
    img = np.full((channels, size, size), 0.2, np.float32)
    img[..., size // 2 :] = 0.8
    return img


TEST_CASE_SHAPES = [[{"method": m, "mode": mode}, shape] for m in METHODS for mode in ("replace", "add")
                    for shape in [(1, 32, 32), (3, 24, 40)]]


@pytest.mark.parametrize("in_type", TYPES)
@pytest.mark.parametrize("args, shape", TEST_CASE_SHAPES)
def test_shape_dtype_type(in_type, args, shape):
    img = in_type(np.random.default_rng(0).random(shape, dtype=np.float32))
    out = EdgeEnhance(**args)(img)
    assert_transform_output(out, img, shape)


@pytest.mark.parametrize("method", METHODS)
def test_strong_on_step_zero_on_flat(method):
    edges = EdgeEnhance(method)(step_edge())[0]
    at_edge = edges[:, 14:18].max(axis=1)
    assert np.all(at_edge > 0.9)  # every row responds at the edge
    assert np.abs(edges[:, :12]).max() < 1e-5 and np.abs(edges[:, 20:]).max() < 1e-5  # nothing away from it
    flat = EdgeEnhance(method)(np.full((1, 32, 32), 0.6, np.float32))
    assert np.abs(flat).max() < 1e-6


def test_roberts_differs_from_sobel():
    img = np.random.default_rng(3).random((1, 32, 32), dtype=np.float32)
    assert not np.allclose(EdgeEnhance("roberts")(img), EdgeEnhance("sobel")(img), atol=1e-2)
    assert not np.allclose(EdgeEnhance("roberts")(step_edge()), EdgeEnhance("sobel")(step_edge()))


@pytest.mark.parametrize("method", METHODS)
def test_add_mode(method):
    img = step_edge()
    edges = EdgeEnhance(method)(img)
    added = EdgeEnhance(method, mode="add", alpha=0.5)(img)
    np.testing.assert_allclose(added, np.clip(img + 0.5 * edges, 0, 1), atol=1e-6)
    assert np.all(added >= img) and np.any(added > img)


def test_per_channel():
    img = np.full((3, 32, 32), 0.5, np.float32)
    img[1] = step_edge()[0]
    out = EdgeEnhance("sobel")(img)
    assert out[1].max() > 0.9
    assert out[0].max() == 0 and out[2].max() == 0


def test_canny_thresholds():
    img = step_edge()
    img[:, :, 16:] = 0.25  # a weak edge: 0.05 * 255 ~ 13 grey levels
    assert EdgeEnhance("canny")(img).max() == 0  # below the default (50, 150)
    assert EdgeEnhance("canny", canny_thresholds=(5, 10))(img).max() == 1


@pytest.mark.parametrize("args, word", [[{"method": "laplace"}, "laplace"], [{"mode": "stack"}, "stack"]])
def test_unknown_method_or_mode(args, word):
    with pytest.raises(ValueError, match=word) as err:
        EdgeEnhance(**args)
    assert ("sobel" in str(err.value)) or ("replace" in str(err.value))
