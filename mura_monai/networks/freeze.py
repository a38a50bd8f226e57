"""Patel et al.'s transfer-learning recipe: train only the last layers, keep every BatchNorm frozen.

Fine-tuning ImageNet EfficientNet-B0 on a few thousand radiographs of one body part overfits
when every layer trains, and small batches of grey images would drag the BatchNorm running
statistics away from the ones the pretrained filters expect. So the early layers keep their
weights, and each BatchNorm keeps both its affine parameters and its running statistics.

Reference: Patel K., Patel V., Patel S., Patel D., "Deep Learning For Abnormalities Detection in
Musculoskeletal Radiographs".
"""
from __future__ import annotations

import functools
import logging

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["count_parameters", "freeze_all_but_last"]

logger = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": ..., "trainable": ...}`` element counts; shared parameters count once."""
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def _layers(model: nn.Module) -> list[nn.Module]:
    """The modules that own parameters themselves (Conv, BatchNorm, Linear...), in registration order."""
    return [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]


def _train_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """A frozen BatchNorm's ``train()``: ``model.train()`` reaches it but leaves it in eval mode."""
    return nn.Module.train(module, False)


def _eval_before_forward(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: also catches a ``training = True`` set directly, before statistics could update."""
    module.training = False


def _freeze_batchnorm(bn: _BatchNorm) -> None:
    bn.requires_grad_(False)
    if getattr(bn, "_frozen_batchnorm", False):
        return  # freezing twice must not stack hooks
    # an instance attribute shadows nn.Module.train; a partial of a module-level function (unlike
    # a bound method) survives deepcopy and pickling of the whole model
    bn.train = functools.partial(_train_in_eval, bn)
    bn.register_forward_pre_hook(_eval_before_forward)
    bn._frozen_batchnorm = True
    bn.eval()


def freeze_all_but_last(model: nn.Module, n_trainable: int | None, freeze_batchnorm: bool = True) -> nn.Module:
    """Freeze all but the last ``n_trainable`` layers of ``model`` (in place) and return it.

    "Layers" are the modules owning parameters themselves, in registration order, which for
    MONAI's and torchvision's networks is the leaf Conv/BatchNorm/Linear modules in forward
    order (EfficientNet-B0 has 131). Keras, which Patel et al. used, also counts parameterless
    layers (activations, pooling, dropout), so its "last 20" reaches less far back than 20 here.

    Frozen layers get ``requires_grad=False``; the last ``n_trainable`` are left as they are (not
    re-enabled). With ``freeze_batchnorm`` every BatchNorm, including those among the last
    ``n_trainable`` (as in the paper), also loses its gradients and stays in eval mode through any
    later ``model.train()``, so its running statistics never update.

    Args:
        model: the network, typically with pretrained weights already loaded.
        n_trainable: how many final layers keep training; ``None`` or ``<= 0`` freezes no layer
            (only the BatchNorms, when asked).
        freeze_batchnorm: freeze every ``_BatchNorm`` (1d/2d/3d, SyncBatchNorm) as described.
    """
    layers = _layers(model)
    n_frozen = max(len(layers) - n_trainable, 0) if n_trainable is not None and n_trainable > 0 else 0
    for layer in layers[:n_frozen]:
        for param in layer.parameters(recurse=False):
            param.requires_grad_(False)
    batchnorms = [m for m in model.modules() if isinstance(m, _BatchNorm)] if freeze_batchnorm else []
    for bn in batchnorms:
        _freeze_batchnorm(bn)
    counts = count_parameters(model)
    logger.info(
        "%d of %d parameters trainable: %d of %d layers frozen, %d BatchNorm layers frozen in eval mode",
        counts["trainable"],
        counts["total"],
        n_frozen,
        len(layers),
        len(batchnorms),
    )
    return model
