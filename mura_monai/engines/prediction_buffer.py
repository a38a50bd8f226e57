"""Per-image predictions gathered from an evaluator, for study-level metrics.

MURA's figures are study-level, but Ignite metrics see only ``(y_pred, y)`` of a batch. The
study, body part and path of each image ride along in the batch dict, so these pieces read
``engine.state.batch`` beside ``engine.state.output``. Both collated (``decollate=False``) and
decollated (list of dicts) engine states are understood.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.utils import CommonKeys

from mura_monai.backends import scoring_backend
from mura_monai.engines.training_summary import model_size, read_training_summary
from mura_monai.metrics import aggregate_studies, binary_metrics, evaluate_predictions

__all__ = ["PredictionBuffer", "batch_records", "StudyAUC", "MetricsReportWriter", "write_evaluation"]

logger = logging.getLogger(__name__)

_CARRIED = ("study", "body_part", "label", "path")


def _as_list(value, n: int) -> list:
    if isinstance(value, torch.Tensor):
        return value.reshape(n, -1)[:, 0].tolist() if value.numel() >= n else [value.item()] * n
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


def batch_records(batch: dict, n: int) -> list[dict]:
    """One dict per image of a collated batch: its study, body part, label and path."""
    carried = {k: _as_list(batch[k], n) for k in _CARRIED if k in batch}
    return [{k: v[i] for k, v in carried.items()} for i in range(n)]


class PredictionBuffer:
    """Accumulates one record per image: probability (sigmoid of the logit) plus carried keys."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def reset(self) -> None:
        self.records = []

    def add_from_engine(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, dict):
            logits = output[CommonKeys.PRED]
            n = int(logits.shape[0])
            probs = torch.sigmoid(logits.detach().float().reshape(n, -1)[:, 0]).cpu().tolist()
            self.records += [{"probability": prob} | record for prob, record in zip(probs, batch_records(batch, n))]
            return
        for item_batch, item_output in zip(batch, output):  # decollated: one dict per image
            logit = item_output[CommonKeys.PRED]
            prob = float(torch.sigmoid(torch.as_tensor(logit).detach().float().reshape(-1)[0]))
            carried = {k: item_batch[k] for k in _CARRIED if k in item_batch}
            for key, value in carried.items():
                if isinstance(value, torch.Tensor):
                    carried[key] = value.reshape(-1)[0].item()
            self.records.append({"probability": prob} | carried)


class StudyAUC(Metric):
    """Study-level ROC AUC (study probability = aggregate of its images') as an Ignite metric.

    Usable as an evaluator's ``key_val_metric``, so ``CheckpointSaver`` keeps the model with
    the best validation study AUC. Under DDP the ranks' images are gathered before the AUC
    (a study's views may sit on different ranks).
    """

    def __init__(self, aggregation: str = "mean", output_transform=lambda x: x, device="cpu") -> None:
        self.aggregation = aggregation
        self._buffer = PredictionBuffer()
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._buffer.reset()

    def update(self, output) -> None:  # fed by iteration_completed, which needs the batch too
        raise NotImplementedError("StudyAUC reads engine.state directly; attach it to an engine")

    def iteration_completed(self, engine: Engine) -> None:
        self._buffer.add_from_engine(engine)

    def compute(self) -> float:
        records = self._buffer.records
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # under DDP each rank validated a shard; every rank needs the same AUC (early stopping, LR schedule)
            shards: list = [None] * dist.get_world_size()
            dist.all_gather_object(shards, records)
            # rank_shard repeats images to even the ranks out: count each image once
            unique = {(r.get("path"), r.get("study")): r for shard in shards for r in shard}
            records = list(unique.values())
        studies = aggregate_studies(records, self.aggregation)
        return binary_metrics([s["label"] for s in studies], [s["probability"] for s in studies])["auc"]


def write_evaluation(
    records: list[dict],
    output_dir: str | Path,
    threshold: float = 0.5,
    aggregation: str = "mean",
    n_bootstrap: int = 1000,
    seed: int = 0,
    extra: dict | None = None,
) -> dict:
    """``metrics.json`` and ``predictions.json`` of labelled image predictions in ``output_dir``."""
    doc = evaluate_predictions(records, threshold, aggregation, n_bootstrap, seed)
    studies = doc.pop("studies")
    doc.update(extra or {})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(doc, indent=2, allow_nan=True))
    (output_dir / "predictions.json").write_text(json.dumps({"images": records, "studies": studies}, indent=2))
    logger.info(
        "study AUC %.4f, kappa %.4f on %d studies; metrics written to %s",
        doc["study"]["auc"], doc["study"]["kappa"], doc["n_studies"], output_dir / "metrics.json",
    )
    return doc


class MetricsReportWriter:
    """Writes ``metrics.json`` (format: docs/formats.md) and ``predictions.json`` when an evaluation ends.

    Args:
        output_dir: folder for the files; created if absent.
        threshold: probability above which a study is called abnormal.
        aggregation: how image probabilities make a study probability (``mean``, ``max``, ``median``).
        n_bootstrap: resamples for the 95% intervals (0 disables them).
        extra: fields copied into metrics.json (e.g. the bundle name, image size).
        ckpt_dir: the evaluated checkpoint's folder; its ``training_summary.json`` (train time,
            epochs, model size) and the size of its ``model.pt`` go under ``"training"``, which
            ``mura-monai compare`` tabulates.
        network: the evaluated network, for its size when the checkpoint has no summary.

    An evaluator scoring through :func:`~mura_monai.backends.evaluation_network` has its backend
    recorded under ``"backend"`` (name and reason): an exported graph's figures are its own.
    """

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float = 0.5,
        aggregation: str = "mean",
        n_bootstrap: int = 1000,
        seed: int = 0,
        extra: dict | None = None,
        ckpt_dir: str | Path | None = None,
        network=None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.network = network
        self.threshold = threshold
        self.aggregation = aggregation
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.extra = dict(extra or {})
        self.buffer = PredictionBuffer()
        self.document: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.buffer.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.buffer.add_from_engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def write(self, engine: Engine | None = None) -> dict:
        training = self._training()
        extra = self.extra | ({"training": training} if training else {})
        backend = scoring_backend(engine)
        if backend is not None:  # the evaluating workflow's evaluator (evaluate.json), not a training's validation
            extra["backend"] = backend.to_json()
        self.document = write_evaluation(
            self.buffer.records, self.output_dir, self.threshold, self.aggregation, self.n_bootstrap, self.seed, extra
        )
        return self.document

    def _training(self) -> dict:
        training = read_training_summary(self.ckpt_dir) if self.ckpt_dir else {}
        if self.network is not None:
            training = model_size(self.network) | training
        best = self.ckpt_dir / "model.pt" if self.ckpt_dir else None
        if best is not None and best.is_file():
            training["checkpoint_mb"] = round(best.stat().st_size / 2**20, 2)
        return training
