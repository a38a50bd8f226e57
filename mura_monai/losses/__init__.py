"""Losses the papers use that torch and MONAI do not ship."""
from __future__ import annotations

from mura_monai.losses.triplet import (
    TRIPLET_LOSSES,
    BatchHardTripletLoss,
    SelectivelyContrastiveLoss,
    TripletFocalLoss,
    TripletLoss,
    triplet_loss,
)
from mura_monai.losses.weighted_bce import BodyPartWeightedBCELoss, mura_class_weights

__all__ = ["TRIPLET_LOSSES", "BatchHardTripletLoss", "BodyPartWeightedBCELoss", "SelectivelyContrastiveLoss",
           "TripletFocalLoss", "TripletLoss", "mura_class_weights", "triplet_loss"]
