"""VGG-19 (configuration E) for Huschauer's MURA baseline, in plain torch layers.

MONAI ships no VGG. Module names copy torchvision's (``features.<idx>``, ``avgpool``,
``classifier.<idx>``) so a local ``vgg19.pth`` / ``vgg19_bn.pth`` loads through
:func:`~mura_monai.networks.pretrained.load_pretrained` with no renaming, its RGB stem summed to grey.

Reference: Huschauer S., "Deep Learning-based Classification of Musculoskeletal Radiographs - Learn
to Zoom from Network Response", ZHAW.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mura_monai.model_settings import as_flag
from mura_monai.networks.pretrained import _unwrap, load_pretrained
from mura_monai.networks.weights import resolve_weights

__all__ = ["VGG19", "vgg19"]

# configuration E of Simonyan & Zisserman: 16 convolutions, "M" a 2x2 max pool
_CONFIG_E: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)


def _check_batch_norm_layout(path: str | Path, batch_norm: bool) -> None:
    """Refuse a checkpoint whose BN layout differs from the model's.

    With BN every later ``features.<idx>`` shifts, and some 512->512 convolutions land on indices
    whose shapes still match (e.g. ``features.30``), so a mismatched file would load weights into
    the wrong layers without any shape error.
    """
    try:  # memory-mapped: only the key names are needed here
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    keys = list(_unwrap(checkpoint))
    if not any(k.startswith("features.") for k in keys):
        return  # not a VGG file; load_pretrained reports it
    # features.1 is the first BatchNorm in vgg19_bn and a parameterless ReLU in vgg19
    has_bn = any(k.startswith("features.1.") for k in keys)
    if has_bn != batch_norm:
        kind = "vgg19_bn (BatchNorm)" if has_bn else "vgg19 (no BatchNorm)"
        raise ValueError(f"{path} holds {kind} weights; build the model with batch_norm={has_bn}")


def _features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in _CONFIG_E:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        # the convolution keeps its bias even before BatchNorm: torchvision's vgg19_bn has it
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers)


class VGG19(nn.Module):
    """VGG-19 with torchvision's layer layout, for 1-channel radiographs by default.

    Args:
        in_channels: 1 for radiographs; 3 to mirror an ImageNet checkpoint exactly.
        out_channels: 1 logit for "abnormal" (sigmoid in the loss and at inference).
        batch_norm: BatchNorm after every convolution. Keep it on when training from scratch:
            without BN this 19-layer plain stack does not converge at MURA's data sizes
            (tens of thousands of images); off only to load torchvision's non-BN ``vgg19.pth``.
        dropout: dropout probability after each of the two hidden fully connected layers.
        hidden_features: width of the two hidden fully connected layers: 4096 as in the paper and
            torchvision (needed to load their weights); narrower heads (the 4096 ones hold 120 M
            of the 140 M parameters) suit small data sets and CPU tests.
        pool_size: side of the grid the features are averaged to before the classifier: 7 as in
            torchvision (needed to load its ``classifier.0``), which gives the classifier a weight
            per position; 1 is global average pooling (the VGG-GAP of Zhou et al.'s CAM paper),
            for which a finding counts the same wherever it lies: what a few hundred images can
            teach from scratch, where the per-position head memorises them.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, batch_norm: bool = True, dropout: float = 0.5,
                 hidden_features: int = 4096, pool_size: int = 7):
        super().__init__()
        self.features = _features(in_channels, batch_norm)
        # fixes the classifier's input at 512*pool_size**2 whatever the image size, as torchvision does
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pool_size * pool_size, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, out_channels),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation, so from-scratch runs match the reference implementation."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg19(
    in_channels: int = 1,
    out_channels: int = 1,
    batch_norm: bool = True,
    dropout: float = 0.5,
    pretrained_path: str | Path | None = None,
    hidden_features: int = 4096,
    pool_size: int = 7,
) -> nn.Module:
    """VGG-19 baseline of Huschauer: one logit for "abnormal".

    Args:
        in_channels: 1 for radiographs; 3 when feeding RGB-replicated images to ImageNet weights.
        out_channels: 1 logit (sigmoid in the loss and at inference).
        batch_norm: BatchNorm after each convolution; needed to train from scratch (see :class:`VGG19`).
            Must match the checkpoint: ``vgg19_bn.pth`` wants True, ``vgg19.pth`` False, since the
            BN layers shift every later ``features.<idx>``.
        dropout: dropout in the classifier.
        hidden_features: width of the classifier's hidden layers (see :class:`VGG19`).
        pool_size: 7 (torchvision) or 1 (global average pooling; see :class:`VGG19`).
        pretrained_path: torchvision-named weights file, its URL, or ``imagenet`` for torchvision's
            ``vgg19_bn`` / ``vgg19`` (by ``batch_norm``; see :mod:`mura_monai.networks.weights`). The
            1000-class ``classifier.6`` does not fit and stays at its initialisation.

    Raises:
        ValueError: when the file's BatchNorm layout differs from ``batch_norm``.
    """
    batch_norm = as_flag(batch_norm, "batch_norm")  # ``--batch_norm false`` arrives as the truthy string "false"
    # fail before building 143M parameters; "imagenet" is the file of the same BatchNorm layout
    path = resolve_weights(pretrained_path, "vgg19_bn" if batch_norm else "vgg19")
    if path is not None:
        _check_batch_norm_layout(path, batch_norm)
    net = VGG19(in_channels=in_channels, out_channels=out_channels, batch_norm=batch_norm, dropout=dropout,
                hidden_features=hidden_features, pool_size=pool_size)
    return load_pretrained(net, path)
