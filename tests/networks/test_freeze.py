from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from mura_monai.networks import count_parameters, efficientnet_b0, freeze_all_but_last


def _mlp() -> nn.Sequential:
    """Parameter counts by hand: Linear(4,3) 12+3=15, BatchNorm1d(3) 3+3=6, Linear(3,2) 6+2=8; 29 in all."""
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _convnet() -> nn.Sequential:
    """Layers owning parameters: 0 conv, 1 bn, 3 conv, 4 bn, 8 linear."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("n_trainable", "freeze_batchnorm", "trainable"),
    [
        (1, False, 8),  # only the last Linear
        (2, False, 6 + 8),  # BatchNorm1d and the last Linear
        (2, True, 8),  # the BatchNorm is among the last 2 but frozen anyway, as in Patel et al.
        (None, True, 15 + 8),  # no layer frozen, only the BatchNorm
        (0, False, 29),
        (10, False, 29),  # more than there are layers: nothing frozen
    ],
)
def test_trainable_count_by_hand(n_trainable, freeze_batchnorm, trainable):
    model = freeze_all_but_last(_mlp(), n_trainable, freeze_batchnorm=freeze_batchnorm)
    assert count_parameters(model) == {"total": 29, "trainable": trainable}


def test_only_last_layers_get_gradients():
    model = freeze_all_but_last(_convnet(), 3)  # conv 3, bn 4 (frozen as a BatchNorm), linear 8
    model.train()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert model[3].weight.grad is not None and model[8].weight.grad is not None
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert model[1].weight.grad is None and model[4].weight.grad is None


def _assert_batchnorm_frozen_through_training_forward(model: nn.Module) -> None:
    bn = model[1]
    before = bn.running_mean.clone()
    model.train()
    assert not bn.training and model[0].training  # the rest of the model does train
    model(torch.randn(2, 1, 8, 8) + 3.0)  # a batch far from the stored statistics
    assert not bn.training
    assert torch.equal(bn.running_mean, before) and bn.num_batches_tracked == 0


def test_batchnorm_stays_in_eval_through_model_train():
    _assert_batchnorm_frozen_through_training_forward(freeze_all_but_last(_convnet(), None))


def test_batchnorm_set_to_training_directly_still_keeps_statistics():
    model = freeze_all_but_last(_convnet(), None)
    model[1].training = True  # bypasses train(); the forward pre-hook catches it
    before = model[1].running_mean.clone()
    model(torch.randn(2, 1, 8, 8) + 3.0)
    assert torch.equal(model[1].running_mean, before)


def test_batchnorm_freezing_survives_deepcopy():
    """EMA / SWA copies of the model must behave like the original."""
    _assert_batchnorm_frozen_through_training_forward(copy.deepcopy(freeze_all_but_last(_convnet(), None)))


def test_freezing_twice_does_not_stack_hooks():
    model = freeze_all_but_last(freeze_all_but_last(_convnet(), 2), 2)
    assert len(model[1]._forward_pre_hooks) == 1


def test_unfrozen_batchnorm_still_updates():
    """Control: without freeze_batchnorm the same forward does move the statistics."""
    model = freeze_all_but_last(_convnet(), None, freeze_batchnorm=False).train()
    model(torch.randn(2, 1, 8, 8) + 3.0)
    assert model[1].training and model[1].num_batches_tracked == 1
    assert model[1].weight.requires_grad


def test_logs_trainable_count(caplog):
    with caplog.at_level(logging.INFO, logger="mura_monai.networks.freeze"):
        freeze_all_but_last(_mlp(), 1, freeze_batchnorm=False)
    assert "8 of 29 parameters trainable" in caplog.text


def test_efficientnet_b0_recipe_of_seed_001():
    model = freeze_all_but_last(efficientnet_b0(out_channels=7), 20)
    assert model._fc.weight.requires_grad and model._conv_head.weight.requires_grad
    assert not model._conv_stem.weight.requires_grad
    assert not model._bn1.weight.requires_grad  # within the last 20 layers, frozen as a BatchNorm
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    counts = count_parameters(model)
    assert 0 < counts["trainable"] < counts["total"]
