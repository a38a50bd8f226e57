"""The class-weighted binary cross-entropy of the MURA baseline (also Han, Lee and Kim's DenseNet).

Rajpurkar et al. weight each term by the other class's share within the study type T:
``L = -w_{T,1}·y·log p - w_{T,0}·(1-y)·log(1-p)`` with ``w_{T,1} = |N_T| / (|A_T| + |N_T|)`` and
``w_{T,0} = |A_T| / (|A_T| + |N_T|)``, |A_T| and |N_T| the abnormal and normal training images
of body part T. The weights therefore need the body part of every sample, which arrives as the
second column of the target (see ``mura_monai.engines.LabelAndBodyPart``).

References:

* Rajpurkar P. et al., "MURA: Large Dataset for Abnormality Detection in Musculoskeletal
  Radiographs", arXiv:1712.06957, 2017.
* Han S.J., Lee C.I., Kim S.-J., "Development of medical aid artificial intelligence through
  detection of musculoskeletal X-ray abnormalities using artificial neural networks in medical image
  data".
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from mura_monai.constants import BODY_PARTS

__all__ = ["BodyPartWeightedBCELoss", "mura_class_weights"]


def mura_class_weights(datalist: Iterable[dict]) -> list[list[float]]:
    """``[w_{T,0}, w_{T,1}]`` for every body part T of ``BODY_PARTS``, from training image dicts.

    A body part absent from the training data gets ``[0.5, 0.5]`` (plain BCE, halved), so a
    data set of fewer parts still trains.
    """
    counts = {part: [0, 0] for part in BODY_PARTS}
    for record in datalist:
        if record["body_part"] in counts:
            counts[record["body_part"]][int(record["label"])] += 1
    weights = []
    for part in BODY_PARTS:
        normal, abnormal = counts[part]
        total = normal + abnormal
        weights.append([abnormal / total, normal / total] if total else [0.5, 0.5])
    return weights


class BodyPartWeightedBCELoss(_Loss):
    """Binary cross-entropy on logits, each sample weighted by its body part's class weights.

    Args:
        weights: one ``[w_negative, w_positive]`` pair per body part, indexed like ``BODY_PARTS``
            (``mura_class_weights`` computes them from the training split).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, weights: Sequence[Sequence[float]], reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        table = torch.as_tensor(weights, dtype=torch.float32)
        if table.ndim != 2 or table.shape[1] != 2:
            raise ValueError(f"Argument 'weights' must be a (n_body_parts, 2) table, got shape {tuple(table.shape)}")
        self.register_buffer("weights", table)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: (B,) or (B, 1) raw network outputs.
            target: (B, 2): the study label (0/1) and the body-part index of each sample.
        """
        if target.ndim != 2 or target.shape[1] != 2:
            raise ValueError(f"target must be (B, 2) [label, body_part_index], got shape {tuple(target.shape)}")
        logits = logits.reshape(-1).float()
        label = target[:, 0].float()
        part = target[:, 1].long()
        if part.min() < 0 or part.max() >= self.weights.shape[0]:
            raise ValueError(f"body part index out of range 0..{self.weights.shape[0] - 1}: {part.tolist()}")
        w = self.weights.to(logits.device)[part]
        sample_weight = torch.where(label > 0.5, w[:, 1], w[:, 0])
        loss = F.binary_cross_entropy_with_logits(logits, label, weight=sample_weight, reduction="none")
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
