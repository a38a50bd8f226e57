from __future__ import annotations

import math

import pytest
import torch

from mura_monai.constants import BODY_PART_INDEX, BODY_PARTS
from mura_monai.losses import BodyPartWeightedBCELoss, mura_class_weights


def test_weights_follow_the_mura_formula():
    data = [{"body_part": "XR_WRIST", "label": 1}] + [{"body_part": "XR_WRIST", "label": 0}] * 3
    weights = mura_class_weights(data)
    # w_T,1 = |N_T| / (|A_T| + |N_T|) = 3/4 ; w_T,0 = |A_T| / (...) = 1/4
    assert weights[BODY_PART_INDEX["XR_WRIST"]] == [0.25, 0.75]
    assert weights[BODY_PART_INDEX["XR_HAND"]] == [0.5, 0.5]
    assert len(weights) == len(BODY_PARTS)


def test_loss_equals_hand_computed_value():
    weights = [[0.5, 0.5]] * 7
    weights[BODY_PART_INDEX["XR_WRIST"]] = [0.25, 0.75]
    loss = BodyPartWeightedBCELoss(weights)
    logits = torch.tensor([[0.0], [2.0]])
    target = torch.tensor([[1.0, BODY_PART_INDEX["XR_WRIST"]], [0.0, BODY_PART_INDEX["XR_WRIST"]]])
    p2 = 1 / (1 + math.exp(-2.0))
    expected = (-0.75 * math.log(0.5) - 0.25 * math.log(1 - p2)) / 2
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_body_part_changes_the_weight():
    weights = [[0.5, 0.5]] * 7
    weights[0] = [0.1, 0.9]
    loss = BodyPartWeightedBCELoss(weights, reduction="none")
    out = loss(torch.zeros(2, 1), torch.tensor([[1.0, 0], [1.0, 1]]))
    assert out[0] > out[1]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="weights"):
        BodyPartWeightedBCELoss([0.5, 0.5])
    with pytest.raises(ValueError, match="target"):
        BodyPartWeightedBCELoss([[0.5, 0.5]] * 7)(torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="out of range"):
        BodyPartWeightedBCELoss([[0.5, 0.5]] * 7)(torch.zeros(1, 1), torch.tensor([[1.0, 9.0]]))


def test_gradient_flows():
    logits = torch.zeros(3, 1, requires_grad=True)
    BodyPartWeightedBCELoss([[0.5, 0.5]] * 7)(logits, torch.tensor([[1.0, 0], [0.0, 2], [1.0, 6]])).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
