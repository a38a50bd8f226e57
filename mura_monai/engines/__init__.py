"""Glue between MONAI's Ignite engines and MURA's study-level evaluation."""
from __future__ import annotations

from mura_monai.engines.prediction_buffer import MetricsReportWriter, PredictionBuffer, StudyAUC
from mura_monai.engines.prepare_batch import LabelAndBodyPart, resolve_device

__all__ = ["LabelAndBodyPart", "MetricsReportWriter", "PredictionBuffer", "StudyAUC", "resolve_device"]
