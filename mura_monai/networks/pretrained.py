"""Pretrained weights from a local file, never from the internet.

Hospitals and CI machines have no route to model hubs, so ImageNet (or MURA) weights are files
the user names with ``--pretrained_path``. Checkpoints come in several shapes (a bare state dict,
``{"state_dict": ...}``, ``{"model": ...}``, torchvision's key names); this loader accepts them,
keeps every tensor whose name and shape match, and adapts an RGB stem to grayscale input.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_pretrained"]

logger = logging.getLogger(__name__)

# torchvision's DenseNet "denselayer1.norm1.weight" is MONAI's "denselayer1.layers.norm1.weight"
_TORCHVISION_DENSE = re.compile(
    r"^(.*denselayer\d+)(\.(?:norm|relu|conv))\.?((?:[12])\.(?:weight|bias|running_mean|running_var))$")


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


def load_pretrained(model: nn.Module, path: str | Path | None, strict_head: bool = False) -> nn.Module:
    """Load matching weights from ``path`` into ``model``; ``None`` or ``""`` leaves it random.

    A first convolution stored for 3 input channels is summed over them when the model takes
    one channel (the usual adaptation of ImageNet weights to radiographs). Tensors whose name
    or shape does not match (typically the classification head) are left at their
    initialisation and reported in the log.

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
        ValueError: when no tensor of the file fits the model.
    """
    if not path:
        return model
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    source = {_rename_torchvision(k): v for k, v in _unwrap(torch.load(path, map_location="cpu", weights_only=True)).items()}
    target = model.state_dict()
    loaded, skipped = {}, []
    for key, value in source.items():
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
