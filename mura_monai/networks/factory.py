"""Networks the bundle configs name, built from MONAI's with the papers' settings.

The papers are cited in full in the README ("Papers") and in each bundle's ``docs/README.md``.
"""
from __future__ import annotations

from pathlib import Path

from monai.networks.nets import DenseNet169, EfficientNetBN, ResNet
from monai.networks.nets.resnet import ResNetBottleneck
from torch import nn

from mura_monai.networks.pretrained import load_pretrained

__all__ = ["POOLINGS", "densenet169", "efficientnet_b0", "global_pooling", "resnet50"]

POOLINGS = ("avg", "max")


def global_pooling(mode: str = "avg") -> nn.Module:
    """The pooling before the classifier: ``avg`` as the papers, or ``max``.

    A fracture line or a small lesion lights up a few positions of the last feature map;
    average pooling divides that by the map's area (16 positions at 128 px), max pooling keeps
    it, which trains faster from scratch on small data sets. The choice has no weights, so
    checkpoints and pretrained files load either way.
    """
    if mode == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if mode == "max":
        return nn.AdaptiveMaxPool2d(1)
    raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")


def densenet169(
    in_channels: int = 1, out_channels: int = 1, dropout_prob: float = 0.0, pretrained_path: str | Path | None = None,
    pooling: str = "avg",
) -> nn.Module:
    """DenseNet-169 of the MURA baseline (Rajpurkar et al. 2017): one logit for "abnormal".

    Args:
        in_channels: 1 for radiographs; 3 when feeding RGB-replicated images to ImageNet weights.
        out_channels: 1 logit (sigmoid in the loss and at inference).
        dropout_prob: dropout after each dense layer.
        pretrained_path: weights file (torchvision or MONAI DenseNet-169 naming), its URL, or ``imagenet``
            for torchvision's (see :mod:`mura_monai.networks.weights`).
        pooling: global pooling before the classifier, ``avg`` (the paper's) or ``max`` (see :func:`global_pooling`).
    """
    net = DenseNet169(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout_prob, pretrained=False
    )
    net.class_layers.pool = global_pooling(pooling)
    return load_pretrained(net, pretrained_path, backbone="densenet169")


def resnet50(in_channels: int = 1, out_channels: int = 1, pretrained_path: str | Path | None = None,
             pooling: str = "avg") -> nn.Module:
    """ResNet-50 of Han, Lee and Kim, laid out exactly as torchvision's so ImageNet files load unrenamed.

    MONAI's defaults differ from torchvision's in two places that matter for the weights: a
    stride-1 stem (MedicalNet's 3D setting) and biased 1x1 downsample convolutions. Here the stem
    is the ImageNet 7x7 stride-2 convolution and the downsample convolutions have no bias, so
    every tensor of torchvision's ``resnet50`` state dict (``conv1.weight``, ``bn1.*``,
    ``layer1.0.downsample.0.weight``, ..., ``fc.*``) has a same-named, same-shaped counterpart.

    Args:
        in_channels: 1 for radiographs; 3 when feeding RGB-replicated images to ImageNet weights.
        out_channels: 1 logit for "abnormal" (sigmoid in the loss and at inference).
        pretrained_path: torchvision- or MONAI-named weights file, its URL, or ``imagenet`` for
            torchvision's IMAGENET1K_V1 (see :mod:`mura_monai.networks.weights`).
        pooling: global pooling before the classifier, ``avg`` (the paper's) or ``max`` (see :func:`global_pooling`).
    """
    net = ResNet(
        block=ResNetBottleneck,
        layers=[3, 4, 6, 3],
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        bias_downsample=False,
        num_classes=out_channels,
    )
    net.avgpool = global_pooling(pooling)
    return load_pretrained(net, pretrained_path, backbone="resnet50")


def efficientnet_b0(
    in_channels: int = 1, out_channels: int = 1, pretrained_path: str | Path | None = None, pooling: str = "avg",
    bn_momentum: float = 0.1,
) -> nn.Module:
    """EfficientNet-B0 of Patel et al.: the 7-class body-part router and the 1-logit abnormality model.

    Weights come only from ``pretrained_path`` (MONAI's ``pretrained=True`` is not used), in MONAI's
    naming (``_conv_stem.weight``, ``_blocks.0.0._bn1.*``) or efficientnet-pytorch's (``_blocks.0._bn1.*``,
    the file MONAI downloads, which ``imagenet`` names). torchvision's ``efficientnet_b0`` naming
    (``features.0.0.weight``) is not mapped and is refused by :func:`load_pretrained`. Patel et al. fine-tune it with
    :func:`~mura_monai.networks.freeze.freeze_all_but_last` (``n_trainable=20``).

    Args:
        in_channels: 1 for radiographs; 3 when feeding RGB-replicated images to ImageNet weights.
        out_channels: 7 for the body-part router, 1 logit for "abnormal".
        pretrained_path: weights file, its URL, or ``imagenet`` (see :mod:`mura_monai.networks.weights`).
        pooling: global pooling before the classifier, ``avg`` (the paper's) or ``max`` (see :func:`global_pooling`).
        bn_momentum: BatchNorm running-statistics momentum (PyTorch's convention). MONAI keeps
            TensorFlow's 0.99, i.e. 0.01 here, with which the statistics that evaluation uses
            trail the weights for thousands of iterations: a short from-scratch training then
            validates at chance (measured: router accuracy 1/7 after 3 epochs while its training
            loss fell). 0.1 lets them follow within an epoch; it changes no weight, so
            pretrained files load the same.

    The classifier is re-initialised PyTorch's way (uniform, bound 1/sqrt(fan-in = 1280)). MONAI
    copies TensorFlow's bound 1/sqrt(fan-out), meant for 1000 ImageNet classes: for the router's 7
    outputs it is 13 times wider and for one abnormality logit 36 times, so the first logits are in
    the tens, the loss starts saturated (router cross-entropy 6.9 against chance's 1.95) and a
    from-scratch router was still at chance after 8 epochs. A pretrained file with a matching
    head overwrites it as before.
    """
    net = EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=out_channels,
        norm=("batch", {"eps": 1e-3, "momentum": bn_momentum}),
    )
    net._avg_pooling = global_pooling(pooling)
    net._fc.reset_parameters()
    return load_pretrained(net, pretrained_path, backbone="efficientnet_b0")
