"""Huschauer's feature-extraction training: CNN features once, then a bag of SVMs fitted on them.

Nothing trains by gradient, so there is no Ignite trainer: the train split's features are
extracted in one pass (deterministic preprocessing, no augmentation, the network in eval
mode), scikit-learn fits the bag, :class:`~mura_monai.networks.svm_head.BaggedSVMHead` takes
its numbers, and ``model.pt`` is saved like any bundle's. Under ``torchrun`` each rank extracts
its shard and rank 0 fits on the gathered rows; the rows are put in path order first, so one
process and N ranks fit the same SVMs on the same table.

Reference: Huschauer S., "Deep Learning-based Classification of Musculoskeletal Radiographs - Learn
to Zoom from Network Response", ZHAW.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.utils import CommonKeys
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import BaggingClassifier
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from mura_monai.engines.distributed import is_main_process
from mura_monai.engines.training_summary import SUMMARY_FILE, model_size
from mura_monai.metrics import aggregate_studies, binary_metrics

__all__ = ["FeatureSVMTrainer", "extract_features", "fit_bagged_svm", "gather_rows"]

logger = logging.getLogger(__name__)

_CARRIED = ("path", "study", "patient", "body_part", "label")


def fit_bagged_svm(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    n_estimators: int = 10,
    degree: int = 5,
    C: float = 1.0,
    coef0: float = 1.0,
    gamma: str | float = "scale",
    max_samples: float = 1.0,
    max_features: float = 1.0,
    class_weight: str | None = None,
    calibration_folds: int = 5,
    seed: int = 0,
    n_jobs: int | None = None,
):
    """Standardise, bag ``n_estimators`` polynomial SVMs, calibrate their mean decision value.

    Args:
        features: ``(N, F)`` image features.
        labels: ``(N,)`` 0 normal / 1 abnormal (the study's label, per image).
        groups: ``(N,)`` patient of each image: calibration folds keep a patient's images
            together, so the sigmoid learns from decisions on unseen patients, as at test time.
        n_estimators, degree: the paper's 10 SVMs with a degree-5 polynomial kernel.
        C, coef0, gamma: SVC's. ``coef0=1`` (sklearn's default is 0): on 2048 standardised
            features ``gamma * <x, x'>`` is ~0.02 between different images and 1 for an image
            with itself, so a homogeneous degree-5 kernel is nearly the identity matrix and the
            SVMs memorise; the paper does not give its value.
        max_samples: fraction of the images each SVM is fitted on (bootstrap). Huschauer bagged to
            fit MURA in memory: 0.1 gives each SVM a tenth (SVM cost grows ~quadratically).
        max_features: fraction of the features each SVM sees.
        class_weight: SVC's, e.g. ``"balanced"``.
        calibration_folds: folds of ``CalibratedClassifierCV`` (Platt sigmoid on out-of-fold
            decision values, then the bag refitted on everything); ``<= 1`` skips calibration
            and the probability is ``sigmoid(decision value)``.
        seed: bagging and fold shuffling.
        n_jobs: parallel SVM fits (joblib); ``None`` is one.

    Returns:
        the fitted ``Pipeline`` that :meth:`BaggedSVMHead.load_sklearn` copies.
    """
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels).astype(np.int64)
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError(f"need images of both classes (0 and 1) to fit the SVMs, got labels {sorted(set(labels))}")
    svc = SVC(kernel="poly", degree=degree, C=C, coef0=coef0, gamma=gamma, class_weight=class_weight)
    classifier = BaggingClassifier(svc, n_estimators=n_estimators, max_samples=max_samples, max_features=max_features,
                                   random_state=seed, n_jobs=n_jobs)
    if calibration_folds > 1:
        groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
        n_splits = min(calibration_folds, len(np.unique(groups)))
        splits = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(features, labels, groups))
        classifier = CalibratedClassifierCV(classifier, method="sigmoid", cv=splits, ensemble=False)
    return make_pipeline(StandardScaler(), classifier).fit(features, labels)


def _column(batch: dict, key: str, n: int) -> list:
    value = batch[key]
    if isinstance(value, torch.Tensor):
        return value.reshape(n, -1)[:, 0].tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def extract_features(network: nn.Module, loader, device: torch.device | str,
                     method: str = "features") -> tuple[np.ndarray, list[dict]]:
    """``(N, F)`` float64 features of every image the loader yields, and each image's record
    (path, study, patient, body part, label), in the loader's order. ``method`` names the
    network's image -> vector method (``features``; the Siamese net's ``embed``)."""
    model = getattr(network, "module", network)
    model.eval()
    rows: list[torch.Tensor] = []
    records: list[dict] = []
    with torch.no_grad():
        for batch in loader:
            images = torch.as_tensor(batch[CommonKeys.IMAGE]).to(device)
            rows.append(getattr(model, method)(images).double().cpu())
            carried = {k: _column(batch, k, images.shape[0]) for k in _CARRIED if k in batch}
            records += [{k: v[i] for k, v in carried.items()} for i in range(images.shape[0])]
    n_features = getattr(getattr(model, "head", None), "n_features", 0)
    features = torch.cat(rows).numpy() if rows else np.zeros((0, n_features))
    return features, records


def gather_rows(features: np.ndarray, records: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Every rank's rows (under ``torchrun``), each image once, in path order.

    ``rank_shard`` repeats images to even the ranks out; the path order makes the table, and so
    the fit, independent of the number of ranks.
    """
    shards = [(features, records)]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shards = [None] * dist.get_world_size()
        dist.all_gather_object(shards, (features, records))
    rows: dict[str, tuple[np.ndarray, dict]] = {}
    for shard_features, shard_records in shards:
        for row, record in zip(shard_features, shard_records):
            rows.setdefault(str(record.get("path", len(rows))), (row, record))
    ordered = [rows[key] for key in sorted(rows)]
    width = features.shape[1] if features.ndim == 2 else 0
    return (np.stack([r for r, _ in ordered]) if ordered else np.zeros((0, width))), [rec for _, rec in ordered]


class FeatureSVMTrainer:
    """Extracts features, fits the bagged SVMs into ``network.head``, validates, saves.

    Writes to ``ckpt_dir``: ``model.pt`` (the network's state dict, as ``CheckpointSaver`` does
    for one object) and ``training_summary.json`` (the fields ``mura-monai compare`` reads,
    the validation study AUC as ``best_metric``, and the SVMs' figures).

    Args:
        network: a :class:`~mura_monai.networks.svm_head.ResNetSVM` (``features`` + ``head``).
        train_loader: the train split, deterministic preprocessing.
        val_loader: the valid split (``None`` to skip validation).
        ckpt_dir: where the model and the summary go.
        device: where the network runs.
        svm: keyword arguments of :func:`fit_bagged_svm` (``n_estimators``, ``degree``, ``C``...).
        aggregation: image-to-study rule of the validation study AUC.
        extra: fields copied into the summary (bundle name, image size...).
    """

    def __init__(self, network: nn.Module, train_loader, val_loader, ckpt_dir: str | Path,
                 device: torch.device | str = "cpu", svm: dict | None = None, aggregation: str = "mean",
                 extra: dict | None = None) -> None:
        self.network = getattr(network, "module", network)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.ckpt_dir = Path(ckpt_dir)
        self.device = torch.device(device)
        self.svm = dict(svm or {})
        self.aggregation = aggregation
        self.extra = dict(extra or {})

    def _extract(self, loader, split: str) -> tuple[np.ndarray, list[dict]]:
        started = time.perf_counter()
        features, records = gather_rows(*extract_features(self.network, loader, self.device))
        logger.info("%s: features of %d images in %.1f s", split, len(records), time.perf_counter() - started)
        return features, records

    def validate(self, features: np.ndarray, records: list[dict]) -> dict:
        """Image and study AUC of the fitted head on the valid split's features."""
        if not records:
            return {}
        with torch.no_grad():
            logits = self.network.head(torch.from_numpy(features).to(self.device))
        probabilities = torch.sigmoid(logits.double()).reshape(-1).cpu().tolist()
        scored = [r | {"probability": p} for r, p in zip(records, probabilities)]
        studies = aggregate_studies(scored, self.aggregation)
        return {
            "val_image_auc": binary_metrics([r["label"] for r in scored], probabilities)["auc"],
            "val_study_auc": binary_metrics([s["label"] for s in studies], [s["probability"] for s in studies])["auc"],
            "n_val_images": len(scored),
            "n_val_studies": len(studies),
        }

    def run(self) -> dict:
        """Fit and save on rank 0 (the only process without ``torchrun``); returns the summary."""
        started = time.perf_counter()
        train_x, train_records = self._extract(self.train_loader, "train")
        val_x, val_records = self._extract(self.val_loader, "valid") if self.val_loader is not None else (None, [])
        extract_s = time.perf_counter() - started
        summary: dict = {}
        if is_main_process():
            fit_started = time.perf_counter()
            labels = np.array([int(r["label"]) for r in train_records])
            groups = np.array([str(r.get("patient", r.get("study"))) for r in train_records])
            fitted = fit_bagged_svm(train_x, labels, groups, **self.svm)
            self.network.head.load_sklearn(fitted)
            fit_s = time.perf_counter() - fit_started
            validation = self.validate(val_x, val_records)
            summary = self._summary(started, extract_s, fit_s, len(train_records), validation)
            self._save(summary)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other ranks wait for the model, so the run ends when it is saved
        return summary

    def _summary(self, started: float, extract_s: float, fit_s: float, n_train: int, validation: dict) -> dict:
        head = self.network.head
        summary = {
            "epochs_completed": 1,
            "max_epochs": 1,
            "iterations": len(self.train_loader),  # this rank's batches: fewer under torchrun
            "train_time_s": round(time.perf_counter() - started, 2),
            "feature_time_s": round(extract_s, 2),
            "svm_fit_time_s": round(fit_s, 2),
            "n_train_images": n_train,
        }
        if validation:
            summary |= {"best_metric": validation["val_study_auc"], "best_metric_epoch": 1} | validation
        summary |= model_size(self.network) | {
            "svm": {
                **self.svm,
                "n_estimators": head.n_estimators,
                "degree": int(head.degree),
                "coef0": float(head.coef0),
                "n_support_vectors": head.n_support_vectors,
                "n_features_per_svm": int(head.feature_index.shape[1]),
                "platt_a_b": [float(v) for v in head.platt],
            }
        } | self.extra
        return summary

    def _save(self, summary: dict) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name, write in (("model.pt", lambda p: torch.save(self.network.state_dict(), p)),
                            (SUMMARY_FILE, lambda p: p.write_text(json.dumps(summary, indent=2)))):
            tmp = self.ckpt_dir / f"{name}.tmp"
            write(tmp)
            tmp.replace(self.ckpt_dir / name)
        logger.info("bag of %d SVMs (%d support vectors) saved to %s; valid study AUC %s",
                    summary["svm"]["n_estimators"], summary["svm"]["n_support_vectors"], self.ckpt_dir / "model.pt",
                    f"{summary['best_metric']:.4f}" if "best_metric" in summary else "not measured")
