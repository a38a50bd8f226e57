"""Losses the seeds use that torch and MONAI do not ship."""
from __future__ import annotations

from mura_monai.losses.weighted_bce import BodyPartWeightedBCELoss, mura_class_weights

__all__ = ["BodyPartWeightedBCELoss", "mura_class_weights"]
