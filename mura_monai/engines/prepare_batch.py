"""Batch preparation for MONAI engines."""
from __future__ import annotations

from typing import Any

import torch
from monai.engines import PrepareBatch
from monai.utils import CommonKeys

__all__ = ["BodyPartTarget", "LabelAndBodyPart", "resolve_device"]


class LabelAndBodyPart(PrepareBatch):
    """Targets as ``(B, 2)``: the study label and the body-part index of each image (and, with
    ``metadata_key``, the patient metadata as the network's ``metadata`` argument).

    ``BodyPartWeightedBCELoss`` needs the body part to pick the MURA class weights, and a
    trainer hands the loss only ``(prediction, target)``: the index travels in the target.
    """

    def __init__(self, label_key: str = CommonKeys.LABEL, body_part_key: str = "body_part_index",
                 metadata_key: str | None = None) -> None:
        self.label_key = label_key
        self.body_part_key = body_part_key
        self.metadata_key = metadata_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        image = batchdata[CommonKeys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
        label = torch.as_tensor(batchdata[self.label_key]).reshape(-1).float()
        part = torch.as_tensor(batchdata[self.body_part_key]).reshape(-1).float()
        target = torch.stack([label, part], dim=1).to(device=device, non_blocking=non_blocking, **kwargs)
        if self.metadata_key is None:
            return image, target
        # MONAI engines call network(image, *args, **kwargs): age and sex reach a metadata network so
        metadata = torch.as_tensor(batchdata[self.metadata_key]).float().to(device=device, non_blocking=non_blocking)
        return image, target, (), {"metadata": metadata}


class BodyPartTarget(PrepareBatch):
    """Targets as ``(B,)`` body-part indices: the training batches of the 7-class router (Patel et al.)."""

    def __init__(self, body_part_key: str = "body_part_index") -> None:
        self.body_part_key = body_part_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        image = batchdata[CommonKeys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
        part = torch.as_tensor(batchdata[self.body_part_key]).reshape(-1).long()
        return image, part.to(device=device, non_blocking=non_blocking, **kwargs)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device in ("auto", "", None):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return torch.device(device)
