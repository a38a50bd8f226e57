"""Combining member networks into one calibrated abnormality probability with per-body-part thresholds.

Everything here works on a matrix ``P`` of member probabilities, one row per image and one column
per member; :mod:`mura_monai.ensemble_predictor` runs the members to get it. The chain is:

1. members combined per image from their raw probabilities: ``mean`` (MURA's own ensemble),
   ``weighted_mean``, ``vote`` (share of members calling the image abnormal at their own Youden
   threshold) or ``stacking`` (scikit-learn logistic regression on the members' logits);
2. each member also calibrated on its own, only to report it on the probability scale of the
   ensemble and to measure disagreement (members calibrated before averaging fitted noise on
   small valid splits: measured in bundles/ensemble/docs/README.md);
3. the combination calibrated (``platt``: logistic regression on the logit; ``isotonic``;
   ``none``);
4. images aggregated into studies like every bundle does (MURA's mean by default);
5. study thresholds per body part at each operating point of :mod:`mura_monai.operating_points`.

Fitted parameters are stored as plain JSON numbers, not pickles: a hospital loads this file
into a service that talks to its PACS, and a pickle is code.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from mura_monai.metrics import AGGREGATIONS, group_by_study
from mura_monai.metrics import logit as _logit
from mura_monai.operating_points import OPERATING_POINTS, OperatingPoint, operating_points

__all__ = [
    "CALIBRATIONS",
    "COMBINE_METHODS",
    "Calibrator",
    "FITTED_FILE",
    "FittedEnsemble",
    "cross_fitted_probabilities",
    "fit_ensemble_parameters",
    "study_uncertainty",
]

COMBINE_METHODS: tuple[str, ...] = ("mean", "weighted_mean", "vote", "stacking")
CALIBRATIONS: tuple[str, ...] = ("none", "platt", "isotonic")
ALL_PARTS = "ALL"
# the fitted combination in a models folder (the ensemble bundle's ``fitted_path`` names the same file)
FITTED_FILE = "ensemble.json"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class Calibrator:
    """Maps a score in [0, 1] to a calibrated probability; fitted with scikit-learn.

    ``params`` holds Platt's ``coef``/``intercept`` on the logit, or the isotonic step
    function's ``x``/``y`` knots (applied by linear interpolation, as scikit-learn does).
    """

    method: str = "none"
    params: dict = field(default_factory=dict)

    def fit(self, scores: Sequence[float], labels: Sequence[int]) -> Calibrator:
        _check_choice("calibration", self.method, CALIBRATIONS)
        s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
        if self.method == "none" or len(np.unique(y)) < 2:
            self.params = {} if self.method == "none" else {"degenerate": True}
        elif self.method == "platt":
            model = LogisticRegression(C=1e4).fit(_logit(s)[:, None], y)
            self.params = {"coef": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
        else:
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
            self.params = {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
        return self

    def __call__(self, scores: Sequence[float]) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        if self.method == "none" or self.params.get("degenerate"):
            return s
        if self.method == "platt":
            return _sigmoid(self.params["coef"] * _logit(s) + self.params["intercept"])
        return np.interp(s, self.params["x"], self.params["y"])


@dataclass
class FittedEnsemble:
    """The fitted combination: what ``ensemble.json`` holds and what inference applies."""

    members: list[str]
    combine: str = "mean"
    calibration: str = "none"
    aggregation: str = "mean"
    weights: list[float] = field(default_factory=list)
    member_calibrators: list[Calibrator] = field(default_factory=list)
    member_thresholds: list[float] = field(default_factory=list)
    stacking: dict = field(default_factory=dict)
    calibrator: Calibrator = field(default_factory=Calibrator)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    fit_summary: dict = field(default_factory=dict)

    # -- applying -----------------------------------------------------------------------
    def member_probabilities(self, P: np.ndarray) -> np.ndarray:
        """Each member's probabilities on its own calibrated scale, shape ``(N, M)``."""
        P = self._check(P)
        return np.column_stack([cal(P[:, j]) for j, cal in enumerate(self.member_calibrators)])

    def combined_scores(self, P: np.ndarray) -> np.ndarray:
        """The members combined per image, before the final calibration."""
        Q = self._check(P)
        if self.combine == "mean":
            return Q.mean(axis=1)
        if self.combine == "weighted_mean":
            w = np.asarray(self.weights, dtype=float)
            return Q @ (w / w.sum())
        if self.combine == "vote":
            return (Q > np.asarray(self.member_thresholds)[None, :]).mean(axis=1)
        coef = np.asarray(self.stacking["coef"], dtype=float)
        return _sigmoid(_logit(Q) @ coef + self.stacking["intercept"])

    def __call__(self, P: np.ndarray) -> np.ndarray:
        """Calibrated ensemble probability per image."""
        return np.clip(self.calibrator(self.combined_scores(P)), 0.0, 1.0)

    @property
    def ranking_is_fitted(self) -> bool:
        """Whether fitting changed how studies rank (weights, votes, stacking, isotonic ties),
        so that figures on the fit split itself need cross-fitting to be honest. A plain mean
        under a monotone calibration ranks as the members do."""
        return self.combine != "mean" or self.calibration == "isotonic"

    def threshold(self, body_part: str, operating_point: str) -> tuple[float, str]:
        """``(threshold, where it was fitted)``: the body part's own when it had enough
        studies, else the threshold fitted on all studies (``"ALL"``)."""
        _check_choice("operating_point", operating_point, OPERATING_POINTS)
        source = body_part if body_part in self.thresholds else ALL_PARTS
        return float(self.thresholds[source][operating_point]), source

    def _check(self, P: np.ndarray) -> np.ndarray:
        P = np.asarray(P, dtype=float)
        if P.ndim != 2 or P.shape[1] != len(self.members):
            raise ValueError(f"expected probabilities of shape (N, {len(self.members)}), got {P.shape}")
        return P

    # -- storing ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> FittedEnsemble:
        doc = dict(doc)
        doc["member_calibrators"] = [Calibrator(**c) for c in doc.get("member_calibrators", [])]
        doc["calibrator"] = Calibrator(**doc.get("calibrator", {}))
        return cls(**doc)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FittedEnsemble:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ensemble is not fitted: {path} (run `mura-monai fit-ensemble` first)")
        return cls.from_dict(json.loads(path.read_text()))


def _study_table(prob: np.ndarray, labels: np.ndarray, studies: Sequence[str], parts: Sequence[str], aggregation: str):
    """Study-level ``(probability, label, body part)`` arrays, studies in first-seen order."""
    reduce = AGGREGATIONS[aggregation]
    index = group_by_study({"study": s} for s in studies)
    rows = [(float(reduce([prob[i] for i in idx])), int(labels[idx[0]]), parts[idx[0]]) for idx in index.values()]
    p, y, part = zip(*rows)
    return np.array(p), np.array(y), list(part)


def _fit_thresholds(p: np.ndarray, y: np.ndarray, parts: list[str], min_per_class: int, targets: dict) -> dict:
    """Operating points on all studies, and per body part where both classes have
    ``min_per_class`` studies (a threshold fitted on three studies is noise)."""
    thresholds = {ALL_PARTS: operating_points(y, p, **targets)}
    for part in sorted(set(parts)):
        mask = np.array([q == part for q in parts])
        n_pos, n_neg = int(y[mask].sum()), int((1 - y[mask]).sum())
        if min(n_pos, n_neg) >= min_per_class:
            thresholds[part] = operating_points(y[mask], p[mask], **targets)
    return thresholds


def fit_ensemble_parameters(
    P: np.ndarray,
    labels: Sequence[int],
    studies: Sequence[str],
    body_parts: Sequence[str],
    members: Sequence[str],
    combine: str = "mean",
    calibration: str = "platt",
    aggregation: str = "mean",
    weights: Sequence[float] | None = None,
    min_studies_per_class: int = 5,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.95,
) -> FittedEnsemble:
    """Fit the whole chain on labelled image-level member probabilities (MURA's valid split).

    Labels are per study (MURA's), repeated on each image. ``weights`` are used by
    ``weighted_mean``; ``None`` weighs each member by how far its study AUC is above chance.
    """
    _check_choice("combine", combine, COMBINE_METHODS)
    _check_choice("calibration", calibration, CALIBRATIONS)
    _check_choice("aggregation", aggregation, tuple(AGGREGATIONS))
    P = np.asarray(P, dtype=float)
    y = np.asarray(labels, dtype=int)
    if P.ndim != 2 or P.shape != (len(y), len(members)):
        raise ValueError(f"expected probabilities of shape ({len(y)}, {len(members)}), got {P.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("fitting an ensemble needs both normal and abnormal studies")
    fitted = FittedEnsemble(members=list(members), combine=combine, calibration=calibration, aggregation=aggregation)
    fitted.member_calibrators = [Calibrator(calibration).fit(P[:, j], y) for j in range(P.shape[1])]
    fitted.member_thresholds = [operating_points(y, P[:, j])[OperatingPoint.YOUDEN] for j in range(P.shape[1])]
    member_auc = [_study_auc(P[:, j], y, studies, body_parts, aggregation) for j in range(P.shape[1])]
    if weights is None:
        weights = [max(auc - 0.5, 0.01) if not math.isnan(auc) else 0.01 for auc in member_auc]
    if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(members)} non-negative numbers with a positive sum, got {list(weights)}")
    fitted.weights = [float(w) for w in weights]
    if combine == "stacking":
        model = LogisticRegression(C=1.0).fit(_logit(P), y)
        fitted.stacking = {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}
    fitted.calibrator = Calibrator(calibration).fit(fitted.combined_scores(P), y)
    p_study, y_study, part_study = _study_table(fitted(P), y, studies, body_parts, aggregation)
    targets = {"target_sensitivity": target_sensitivity, "target_specificity": target_specificity}
    fitted.thresholds = _fit_thresholds(p_study, y_study, part_study, min_studies_per_class, targets)
    fitted.fit_summary = {
        "n_images": int(len(y)),
        "n_studies": int(len(y_study)),
        "member_study_auc": dict(zip(members, member_auc)),
        "targets": targets,
        "min_studies_per_class": min_studies_per_class,
    }
    return fitted


def _study_auc(prob, labels, studies, parts, aggregation) -> float:
    from sklearn.metrics import roc_auc_score

    p, y, _ = _study_table(np.asarray(prob), np.asarray(labels), studies, parts, aggregation)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def cross_fitted_probabilities(
    P: np.ndarray,
    labels: Sequence[int],
    studies: Sequence[str],
    body_parts: Sequence[str],
    members: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
    **fit_kwargs,
) -> np.ndarray:
    """Out-of-fold ensemble probabilities per image: each study scored by a chain fitted on the
    other folds' studies, so that metrics of a fitted ensemble on its own fit split are honest.

    Folds keep a study's images together and balance the labels (StratifiedGroupKFold).
    """
    P = np.asarray(P, dtype=float)
    y = np.asarray(labels, dtype=int)
    groups = np.asarray(studies)
    n_pos_studies = len({s for s, lab in zip(studies, y) if lab == 1})
    n_neg_studies = len(set(studies)) - n_pos_studies
    folds = min(n_folds, n_pos_studies, n_neg_studies)
    if folds < 2:
        raise ValueError("cross-fitting needs at least 2 normal and 2 abnormal studies")
    out = np.full(len(y), np.nan)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    parts = list(body_parts)
    for train, test in splitter.split(P, y, groups):
        fitted = fit_ensemble_parameters(
            P[train], y[train], [studies[i] for i in train], [parts[i] for i in train], members, **fit_kwargs
        )
        out[test] = fitted(P[test])
    return out


def study_uncertainty(member_probs: Sequence[float], probability: float, threshold: float, margin: float = 0.15) -> dict:
    """How much to doubt a study's call, in [0, 1], from two signals a reader understands.

    - ``disagreement``: spread (max - min) of the members' calibrated study probabilities;
    - ``closeness``: 1 when the probability sits on the threshold, falling to 0 at ``margin`` away.

    ``uncertainty`` is the larger of the two: either alone is reason to look twice.
    """
    q = np.asarray(member_probs, dtype=float)
    disagreement = float(q.max() - q.min()) if q.size > 1 else 0.0
    closeness = float(max(0.0, 1.0 - abs(probability - threshold) / margin)) if margin > 0 else 0.0
    return {"disagreement": disagreement, "closeness": closeness, "uncertainty": max(disagreement, closeness)}
