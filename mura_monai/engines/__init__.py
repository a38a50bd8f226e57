"""Glue between MONAI's Ignite engines and MURA's study-level evaluation."""
from __future__ import annotations

from mura_monai.backends import evaluation_network
from mura_monai.engines.checkpoints import BEST_MODEL_FILE, attach_resume, last_checkpoint
from mura_monai.engines.distributed import distributed_device, init_distributed, is_main_process, rank_shard
from mura_monai.engines.feature_svm import FeatureSVMTrainer, extract_features, fit_bagged_svm, gather_rows
from mura_monai.engines.metric_learning import EmbeddingHeadFitter, EmbeddingReportWriter, pk_sampler, recall_at_k
from mura_monai.engines.overrides import OverrideRefused, check_overrides
from mura_monai.engines.prediction_buffer import MetricsReportWriter, PredictionBuffer, StudyAUC
from mura_monai.engines.prepare_batch import BodyPartTarget, LabelAndBodyPart, resolve_device
from mura_monai.engines.staged_training import StagedTraining
from mura_monai.engines.training_summary import TrainingSummaryWriter, model_size, read_training_summary
from mura_monai.engines.view_fusion import ViewFusionWriter

__all__ = [
    "BEST_MODEL_FILE", "BodyPartTarget", "LabelAndBodyPart", "MetricsReportWriter", "PredictionBuffer", "StagedTraining",
    "StudyAUC",
    "TrainingSummaryWriter", "ViewFusionWriter", "distributed_device", "init_distributed", "is_main_process", "last_checkpoint",
    "model_size", "rank_shard", "read_training_summary", "attach_resume",
    "resolve_device", "OverrideRefused", "check_overrides",
    "EmbeddingHeadFitter", "EmbeddingReportWriter", "pk_sampler", "recall_at_k",
    "FeatureSVMTrainer", "extract_features", "fit_bagged_svm", "gather_rows",
    "evaluation_network",
]
