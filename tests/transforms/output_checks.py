"""The output contract every array transform keeps, checked in one place."""
from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

# numpy, torch and MetaTensor inputs; the MetaTensor carries meta that must survive the transform
TYPES = (np.asarray, torch.as_tensor, lambda x: MetaTensor(torch.as_tensor(x), meta={"filename_or_obj": "x.png"}))


def assert_transform_output(out, img, shape, unit_range: bool = True) -> None:
    """Same container type as the input, the expected shape, float32, meta kept; in [0, 1] if asked."""
    assert type(out) is type(img)
    assert tuple(out.shape) == tuple(shape)
    assert out.dtype in (np.float32, torch.float32)
    if unit_range:
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if isinstance(img, MetaTensor):
        assert out.meta["filename_or_obj"] == "x.png"
