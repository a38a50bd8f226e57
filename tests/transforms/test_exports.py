from __future__ import annotations

import mura_monai.transforms as transforms
from mura_monai.transforms import array, dictionary

ARRAY = ["Clahe", "EdgeEnhance", "LaplacianSharpen", "IntensityRescale", "RandIntensityRescale", "GBPNormalize",
         "ResizeWithAspectPad"]


def test_public_names():
    assert sorted(array.__all__) == sorted(ARRAY)
    expected_dict = [f"{name}{suffix}" for name in ARRAY for suffix in ("d", "D", "Dict")]
    assert sorted(dictionary.__all__) == sorted(expected_dict)
    assert sorted(transforms.__all__) == sorted(ARRAY + expected_dict)
    for name in transforms.__all__:
        assert getattr(transforms, name) is getattr(array if name in ARRAY else dictionary, name)
    for name in ARRAY:
        assert getattr(transforms, f"{name}D") is getattr(transforms, f"{name}d")
        assert getattr(transforms, f"{name}Dict") is getattr(transforms, f"{name}d")
