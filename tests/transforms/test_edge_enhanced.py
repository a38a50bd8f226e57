from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import EdgeEnhance, EdgeEnhanceD, EdgeEnhanced, EdgeEnhanceDict


def make_data():
    img = np.full((1, 32, 32), 0.2, np.float32)
    img[..., 16:] = 0.8
    return {"image": img, "mask": img.copy()}


TEST_CASE_KEYS = [
    [{"keys": "image", "method": "prewitt"}, ["image"]],
    [{"keys": ["image", "mask"], "method": "canny"}, ["image", "mask"]],
    [{"keys": ["mask", "nope"], "mode": "add", "allow_missing_keys": True}, ["mask"]],
]


@pytest.mark.parametrize("args, changed", TEST_CASE_KEYS)
def test_only_given_keys(args, changed):
    data = make_data()
    xform = EdgeEnhanced(**args)
    out = xform(data)
    for key in ("image", "mask"):
        if key in changed:
            np.testing.assert_allclose(out[key], xform.transform(data[key]))
            assert not np.allclose(out[key], data[key])
        else:
            assert out[key] is data[key]


def test_aliases_and_args():
    assert EdgeEnhanceD is EdgeEnhanced and EdgeEnhanceDict is EdgeEnhanced
    xform = EdgeEnhanced("image", method="canny", canny_thresholds=(10, 20))
    assert isinstance(xform.transform, EdgeEnhance) and xform.transform.canny_thresholds == (10, 20)
    with pytest.raises(ValueError):
        EdgeEnhanced("image", method="scharr")
