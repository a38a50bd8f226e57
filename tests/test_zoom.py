"""Zoom to attention: the box follows the network's Grad-CAM and keeps at least the input size."""
from __future__ import annotations

import pytest
import torch

from mura_monai.zoom import combine, zoom_boxes
from tests.test_explain import BrightnessNet


def test_box_covers_the_bright_region_at_full_resolution():
    # a 400 x 200 radiograph (rows x columns), prepared to a 64 x 64 input by aspect resize + padding
    rows, cols, size = 400, 200, 64
    prepared = torch.zeros(1, 1, size, size)
    # the bright patch at radiograph rows 250..330, columns 60..140 -> input rows 40..53, cols 16+10..16+22
    prepared[0, 0, 40:53, 26:38] = 1.0
    (box,) = zoom_boxes(BrightnessNet(), prepared, [(rows, cols)], input_size=size, threshold=0.7)
    top, left, bottom, right = box
    assert top <= 260 and bottom >= 320 and left <= 70 and right >= 130  # covers the patch
    assert bottom - top >= size and right - left >= size  # never smaller than the network input
    assert (bottom - top) * (right - left) < 0.25 * rows * cols  # and a real zoom


def test_combine():
    assert combine(0.2, 0.6) == pytest.approx(0.4)
    assert combine(0.2, 0.6, "max") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="zoom_combine"):
        combine(0.2, 0.6, "min")
