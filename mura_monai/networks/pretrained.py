"""Pretrained weights into the project's networks, whatever naming their publisher used.

Hospitals and CI machines often have no route to model hubs, so ``--pretrained_path`` names a
local file; a published URL is also accepted, downloaded once and hash-checked
(:mod:`mura_monai.networks.weights`). Checkpoints come in several shapes (a bare state dict,
``{"state_dict": ...}``, ``{"model": ...}``, torchvision's DenseNet names, efficientnet-pytorch's
flat block numbering); this loader accepts them, keeps every tensor whose name and shape match,
and adapts an RGB stem to grayscale input.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from mura_monai.networks.weights import resolve_weights

__all__ = ["load_pretrained"]

logger = logging.getLogger(__name__)

# torchvision's DenseNet "denselayer1.norm1.weight" (its published file: "denselayer1.norm.1.weight",
# from before PyTorch refused dots in module names) is MONAI's "denselayer1.layers.norm1.weight"
_TORCHVISION_DENSE = re.compile(
    r"^(.*denselayer\d+)(\.(?:norm|relu|conv))\.?((?:[12])\.(?:weight|bias|running_mean|running_var))$")
# efficientnet-pytorch numbers its blocks 0..15 ("_blocks.3._bn1.weight"); MONAI's EfficientNetBN
# nests the same blocks in stages and keeps the global number ("_blocks.1.3._bn1.weight")
_STAGED_BLOCK = re.compile(r"^(.*_blocks)\.\d+\.(\d+\..+)$")


def _unwrap(checkpoint) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "network"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a state dict, got {type(checkpoint).__name__}")
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _rename_torchvision(key: str) -> str:
    match = _TORCHVISION_DENSE.match(key)
    return f"{match[1]}.layers{match[2]}{match[3]}" if match else key


def _flat_block_names(target: dict) -> dict[str, str]:
    """efficientnet-pytorch's name of each MONAI EfficientNet block tensor (MONAI's own loader's mapping)."""
    return {f"{m[1]}.{m[2]}": key for key in target if (m := _STAGED_BLOCK.match(key))}


def load_pretrained(model: nn.Module, path: str | Path | None, strict_head: bool = False,
                    backbone: str | None = None) -> nn.Module:
    """Load matching weights from ``path`` into ``model``; ``None`` or ``""`` leaves it random.

    ``path`` is a local file, an ``http(s)://`` or ``file://`` URL (downloaded once into torch's
    hub cache and hash-checked), or ``imagenet`` for the published weights of ``backbone`` (see
    :func:`~mura_monai.networks.weights.resolve_weights`).

    A first convolution stored for 3 input channels is summed over them when the model takes
    one channel (the usual adaptation of ImageNet weights to radiographs). Tensors whose name
    or shape does not match (typically the classification head) are left at their
    initialisation and reported in the log.

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
        ValueError: when no tensor of the file fits the model, or a download does not match its hash.
        OSError: when a URL cannot be downloaded.
    """
    path = resolve_weights(path, backbone)
    if path is None:
        return model
    source = {_rename_torchvision(k): v for k, v in _unwrap(torch.load(path, map_location="cpu", weights_only=True)).items()}
    target = model.state_dict()
    flat_blocks = _flat_block_names(target)
    loaded, skipped = {}, []
    for key, value in source.items():
        key = key if key in target else flat_blocks.get(key, key)
        if key not in target:
            skipped.append(key)
            continue
        want = target[key].shape
        if value.shape != want and value.ndim == 4 and value.shape[1] == 3 and want[1] == 1 and value.shape[0] == want[0]:
            value = value.sum(dim=1, keepdim=True)
        if value.shape == want:
            loaded[key] = value
        else:
            skipped.append(key)
    if not loaded:
        raise ValueError(f"no tensor in {path} matches the model ({len(source)} tensors, none with a matching name and shape)")
    missing = [k for k in target if k not in loaded]
    if strict_head and missing:
        raise ValueError(f"{path} leaves {len(missing)} model tensors unset, e.g. {missing[:3]}")
    target.update(loaded)
    model.load_state_dict(target)
    logger.info("loaded %d/%d tensors from %s (%d in the file unused)", len(loaded), len(target), path, len(skipped))
    return model
