from __future__ import annotations

import numpy as np
import pytest

from mura_monai.transforms import LaplacianSharpen, LaplacianSharpenD, LaplacianSharpend, LaplacianSharpenDict


def make_data():
    row = np.interp(np.arange(32), [12, 20], [0.3, 0.7]).astype(np.float32)
    img = np.broadcast_to(row, (1, 32, 32)).copy()
    return {"image": img, "label": img.copy()}


TEST_CASE_KEYS = [
    [{"keys": "image", "strength": 3.0}, ["image"]],
    [{"keys": ["image", "label"]}, ["image", "label"]],
    [{"keys": ["label", "absent"], "allow_missing_keys": True}, ["label"]],
]


@pytest.mark.parametrize("args, changed", TEST_CASE_KEYS)
def test_only_given_keys(args, changed):
    data = make_data()
    out = LaplacianSharpend(**args)(data)
    expected = LaplacianSharpen(args.get("strength", 1.5))(data["image"])
    for key in ("image", "label"):
        if key in changed:
            np.testing.assert_allclose(out[key], expected)
        else:
            assert out[key] is data[key]


def test_aliases():
    assert LaplacianSharpenD is LaplacianSharpend and LaplacianSharpenDict is LaplacianSharpend
