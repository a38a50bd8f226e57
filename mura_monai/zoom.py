"""Zoom to attention (Huschauer): look again, closer, where the network looked.

The network reads a radiograph shrunk to its input size (a 2000-pixel wrist becomes 224); a
hairline fracture may span a pixel there. Huschauer takes the network's attention, crops that
region from the full-resolution image — at least the network's input size, so the crop is
never upsampled past the original — predicts again, and combines both predictions. Attention
here is Grad-CAM on the network's own CAM layer (:mod:`mura_monai.explain`), mapped back to the
radiograph's grid; the region is the largest connected area above ``threshold``.

Reference: Huschauer S., "Deep Learning-based Classification of Musculoskeletal Radiographs - Learn
to Zoom from Network Response", ZHAW.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mura_monai.explain import cam_to_original, compute_cam
from mura_monai.networks.agcnn import attention_boxes

__all__ = ["ZOOM_COMBINES", "combine", "zoom_boxes"]

ZOOM_COMBINES = ("mean", "max")


def zoom_boxes(network: torch.nn.Module, batch: torch.Tensor, original_shapes: Sequence[tuple[int, int]],
               input_size: int, threshold: float = 0.7) -> list[tuple[int, int, int, int]]:
    """Per image, the ``(row0, col0, row1, col1)`` box of the radiograph its attention selects."""
    cams = compute_cam(network, batch)
    boxes = []
    for cam, (rows, cols) in zip(cams, original_shapes):
        heat = torch.from_numpy(cam_to_original(cam[0].numpy(), (rows, cols)))[None]
        boxes.extend(attention_boxes(heat, (rows, cols), threshold, min_fraction=0.0,
                                     min_size=(min(input_size, rows), min(input_size, cols))))
    return boxes


def combine(first: float, zoomed: float, how: str = "mean") -> float:
    """The image probability from the whole-image and the zoomed prediction."""
    if how == "mean":
        return float(np.mean([first, zoomed]))
    if how == "max":
        return float(max(first, zoomed))
    raise ValueError(f"zoom_combine must be one of {list(ZOOM_COMBINES)}, got {how!r}")
