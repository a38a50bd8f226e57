"""Fusing the views of a study (Huschauer): late fusion of image scores, early fusion of features.

MURA labels studies, and a study has 1 to 4+ views; the baseline averages the views'
probabilities. Huschauer tried early fusion (no gain) and suggested late fusion. Here:

* late: ``mean`` (MURA's rule), ``max``, ``median`` of the image probabilities, and ``learned``:
  a logistic regression on the study's max, mean and min image logits — an ordered weighted
  average whose weights are fitted to labelled studies, so it can learn "one clearly abnormal
  view is enough" or "trust agreement" from data;
* early: ``early_mean`` / ``early_max`` pool the views' features (the input of the network's
  last linear layer) before that layer classifies the study once.

The networks are trained on single images, so early fusion reuses an image-trained classifier
on pooled features: with a linear head ``early_mean`` equals averaging logits, ``early_max``
is the one that differs. Which rule wins is measured by :func:`compare_view_fusions`.

Reference: Huschauer S., "Deep Learning-based Classification of Musculoskeletal Radiographs - Learn
to Zoom from Network Response", ZHAW.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from mura_monai.metrics import AGGREGATIONS, binary_metrics, bootstrap_intervals, group_by_study
from mura_monai.metrics import logit as _logit

__all__ = [
    "EARLY_FUSIONS", "LATE_FUSIONS", "VIEW_FUSION_FILE", "VIEW_FUSIONS", "LearnedViewFusion", "capture_features",
    "compare_view_fusions",
    "fuse_study", "last_linear",
]

LATE_FUSIONS = (*AGGREGATIONS, "learned")
EARLY_FUSIONS = ("early_mean", "early_max")
VIEW_FUSION_FILE = "view_fusion.json"
VIEW_FUSIONS = (*LATE_FUSIONS, *EARLY_FUSIONS)


def last_linear(network: nn.Module) -> nn.Module:
    """The classifier layer whose input early fusion pools: the network's ``fusion_head`` when
    it declares one (the Siamese net's embedding classifier), else the last ``nn.Linear``."""
    network = getattr(network, "module", network)
    declared = getattr(network, "fusion_head", None)
    if isinstance(declared, nn.Module):
        return declared
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(network).__name__} has no linear classifier layer: early fusion needs one")
    return linears[-1]


@contextmanager
def capture_features(network: nn.Module, into: list):
    """Append the input of the network's last linear layer (``(B, F)`` on the CPU) to ``into``
    for each forward pass inside the block."""
    head = last_linear(network)
    handle = head.register_forward_pre_hook(lambda _m, args: into.append(args[0].detach().float().cpu()))
    try:
        yield head
    finally:
        handle.remove()


def _statistics(logits) -> np.ndarray:
    z = np.sort(np.asarray(logits, dtype=np.float64))
    return np.array([z[-1], z.mean(), z[0]])


class LearnedViewFusion:
    """Study logit = w · (max, mean, min of the image logits) + b, fitted by logistic regression.

    Three numbers and a bias are all it learns, so a few dozen labelled studies fit it; they are
    kept as JSON (``view_fusion.json``) for inference, never pickled.
    """

    def __init__(self, weights=(0.0, 1.0, 0.0), bias: float = 0.0) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = float(bias)

    def fit(self, study_logits: list, labels) -> LearnedViewFusion:
        x = np.stack([_statistics(z) for z in study_logits])
        model = LogisticRegression(C=1.0).fit(x, np.asarray(labels, dtype=int))
        self.weights, self.bias = model.coef_[0].astype(np.float64), float(model.intercept_[0])
        return self

    def probability(self, logits) -> float:
        return float(1.0 / (1.0 + np.exp(-(self.weights @ _statistics(logits) + self.bias))))

    def to_dict(self) -> dict:
        return {"method": "learned", "features": ["max_logit", "mean_logit", "min_logit"],
                "weights": self.weights.tolist(), "bias": self.bias}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LearnedViewFusion:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"learned view fusion needs its fitted weights: {path} (run mura-monai evaluate first)")
        doc = json.loads(path.read_text())
        fit = doc.get("learned_fit", doc)  # an evaluation's view_fusion.json, or the weights alone
        if not fit:
            raise ValueError(f"{path} has no learned view-fusion weights (its studies were all of one class)")
        return cls(fit["weights"], fit["bias"])


def fuse_study(method: str, probabilities, features: torch.Tensor | None = None, head: nn.Linear | None = None,
               learned: LearnedViewFusion | None = None) -> float:
    """One study probability from its views by ``method`` (one of :data:`VIEW_FUSIONS`)."""
    if method in AGGREGATIONS:
        return float(AGGREGATIONS[method](list(probabilities)))
    if method == "learned":
        if learned is None:
            raise ValueError("learned view fusion needs fitted weights")
        return learned.probability(_logit(probabilities))
    if method in EARLY_FUSIONS:
        if features is None or head is None:
            raise ValueError(f"{method} needs the views' features and the classifier layer")
        pooled = features.mean(dim=0) if method == "early_mean" else features.amax(dim=0)
        with torch.no_grad():
            weight = next(head.parameters())
            logit = head(pooled[None].to(weight.device, weight.dtype)).reshape(-1)[0]
        return float(torch.sigmoid(logit.float()))
    raise ValueError(f"view fusion must be one of {list(VIEW_FUSIONS)}, got {method!r}")


def compare_view_fusions(records: list[dict], features: torch.Tensor | None, head: nn.Linear | None,
                         threshold: float = 0.5, n_bootstrap: int = 200, seed: int = 0, n_splits: int = 5) -> dict:
    """Study-level metrics of every fusion rule on the same labelled image predictions.

    ``learned`` is scored out of fold (StratifiedGroupKFold by patient), since it is fitted on
    the very studies it is scored on; the weights fitted on all of them are returned for
    inference under ``"learned_fit"``.
    """
    groups = group_by_study(records)
    studies = list(groups)
    labels = np.array([int(records[idx[0]]["label"]) for idx in groups.values()])
    # a patient's studies stay on one side of a fold (MURA study ids name the patient folder)
    patients = [records[idx[0]].get("patient") or str(Path(s).parent) for s, idx in groups.items()]
    probabilities = {s: [records[i]["probability"] for i in idx] for s, idx in groups.items()}
    rows: dict[str, dict] = {}
    methods = [m for m in VIEW_FUSIONS if m != "learned" and (m not in EARLY_FUSIONS or features is not None)]
    for method in methods:
        fused = [fuse_study(method, probabilities[s], features[groups[s]] if features is not None else None, head)
                 for s in studies]
        rows[method] = _row(labels, fused, threshold, n_bootstrap, seed)
    logits = [_logit(probabilities[s]) for s in studies]
    out_of_fold = np.full(len(studies), np.nan)
    splits = min(n_splits, int(np.bincount(labels, minlength=2).min()))
    if splits >= 2:
        folds = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
        for train, test in folds.split(np.zeros(len(studies)), labels, groups=patients):
            model = LearnedViewFusion().fit([logits[i] for i in train], labels[train])
            out_of_fold[test] = [model.probability(logits[i]) for i in test]
        rows["learned"] = _row(labels, out_of_fold.tolist(), threshold, n_bootstrap, seed) | {"scored": "out of fold"}
    fitted = LearnedViewFusion().fit(logits, labels).to_dict() if len(set(labels)) == 2 else None
    return {"n_studies": len(studies), "baseline": "mean", "methods": rows, "learned_fit": fitted}


def _row(labels, probabilities, threshold, n_bootstrap, seed) -> dict:
    row = binary_metrics(labels, probabilities, threshold)
    if n_bootstrap > 0:
        row["ci95"] = bootstrap_intervals(labels, probabilities, threshold, n_bootstrap=n_bootstrap, seed=seed)
    return row
