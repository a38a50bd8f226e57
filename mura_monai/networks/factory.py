"""Networks the bundle configs name, built from MONAI's with the seeds' settings."""
from __future__ import annotations

from pathlib import Path

from monai.networks.nets import DenseNet169
from torch import nn

from mura_monai.networks.pretrained import load_pretrained

__all__ = ["densenet169"]


def densenet169(
    in_channels: int = 1, out_channels: int = 1, dropout_prob: float = 0.0, pretrained_path: str | Path | None = None
) -> nn.Module:
    """DenseNet-169 of the MURA baseline (seed 004): one logit for "abnormal".

    Args:
        in_channels: 1 for radiographs; 3 when feeding RGB-replicated images to ImageNet weights.
        out_channels: 1 logit (sigmoid in the loss and at inference).
        dropout_prob: dropout after each dense layer.
        pretrained_path: local weights file (torchvision or MONAI DenseNet-169 naming); never downloaded.
    """
    net = DenseNet169(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout_prob, pretrained=False
    )
    return load_pretrained(net, pretrained_path)
