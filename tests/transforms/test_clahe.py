from __future__ import annotations

import cv2
import numpy as np
import pytest

from mura_monai.transforms import Clahe
from tests.transforms.output_checks import TYPES, assert_transform_output


def low_contrast(channels: int = 1, size: int = 64, seed: int = 0) -> np.ndarray:
    """Grey levels squeezed into [0.45, 0.55]: a smooth ramp plus a little texture."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :].repeat(size, axis=0)
    plane = 0.45 + 0.07 * ramp + 0.03 * rng.random((size, size), dtype=np.float32)
    return np.repeat(plane[None], channels, axis=0)


TEST_CASE_SHAPES = [
    [{}, (1, 64, 64)],
    [{"clip_limit": 4.0, "tile_grid_size": (4, 4)}, (1, 64, 48)],
    [{}, (3, 64, 64)],
    [{"tile_grid_size": (2, 8)}, (3, 32, 64)],
]


@pytest.mark.parametrize("in_type", TYPES)
@pytest.mark.parametrize("args, shape", TEST_CASE_SHAPES)
def test_shape_dtype_type(in_type, args, shape):
    img = in_type(np.random.default_rng(1).random(shape, dtype=np.float32))
    out = Clahe(**args)(img)
    assert_transform_output(out, img, shape)


def test_increases_local_contrast():
    img = low_contrast(1)
    out = Clahe()(img)
    assert out.std() > 2 * img.std()
    # higher limit, more contrast (on 32 x 32 tiles: OpenCV's per-bin limit is an int, >= 1)
    assert Clahe(4.0, tile_grid_size=(2, 2))(img).std() > Clahe(2.0, tile_grid_size=(2, 2))(img).std()


def test_rgb_grey_stays_grey():
    img = low_contrast(3)
    out = Clahe()(img)
    assert out.std() > 2 * img.std()  # lightness changed
    np.testing.assert_allclose(out[0], out[1], atol=2e-3)
    np.testing.assert_allclose(out[0], out[2], atol=2e-3)


def test_rgb_changes_lightness_only():
    img = low_contrast(3)
    img[0] *= 1.15  # a faint warm tint, well inside the RGB gamut
    img[2] *= 0.9
    out = Clahe()(img)
    lab_in = cv2.cvtColor(np.ascontiguousarray(img.transpose(1, 2, 0)), cv2.COLOR_RGB2LAB)
    lab_out = cv2.cvtColor(np.ascontiguousarray(out.transpose(1, 2, 0)), cv2.COLOR_RGB2LAB)
    assert lab_out[..., 0].std() > 2 * lab_in[..., 0].std()
    np.testing.assert_allclose(lab_out[..., 1:], lab_in[..., 1:], atol=1.5)  # a, b on a +-127 scale


def test_matches_opencv_uint8_on_grey():
    img = low_contrast(1)
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.rint(img[0] * 255).astype(np.uint8))
    np.testing.assert_allclose(Clahe()(img)[0], expected / 255.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 16, 16), (4, 16, 16), (16, 16), (1, 1, 16, 16)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError):
        Clahe()(np.zeros(shape, np.float32))


def test_bad_args():
    with pytest.raises(ValueError):
        Clahe(clip_limit=0)
    with pytest.raises(ValueError):
        Clahe(tile_grid_size=(0, 8))
