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

``combine="auto"`` chooses step 1 (and which members take part) by out-of-fold study AUC on
the fitting split among every member alone, and mean, weighted mean, vote and stacking of
subsets of members (:func:`select_combination`): an ensemble that loses to its best member on
the split it was fitted on is worse than no ensemble, so that member alone is always a candidate.

Fitted parameters are stored as plain JSON numbers, not pickles: a hospital loads this file
into a service that talks to its PACS, and a pickle is code.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path, PurePosixPath

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from mura_monai.metrics import AGGREGATIONS, group_by_study
from mura_monai.metrics import logit as _logit
from mura_monai.operating_points import OPERATING_POINTS, OperatingPoint, operating_points

__all__ = [
    "AUTO",
    "CALIBRATIONS",
    "COMBINE_CHOICES",
    "COMBINE_METHODS",
    "Calibrator",
    "FITTED_FILE",
    "FittedEnsemble",
    "SELECTION_RULE",
    "SELECTION_TOLERANCE",
    "cross_fitted_probabilities",
    "evaluation_probabilities",
    "fit_ensemble_parameters",
    "select_combination",
    "patients_of_studies",
    "study_uncertainty",
]

COMBINE_METHODS: tuple[str, ...] = ("mean", "weighted_mean", "vote", "stacking")
# ``auto``: one of COMBINE_METHODS on a subset of members, or one member alone, chosen by select_combination
AUTO = "auto"
COMBINE_CHOICES: tuple[str, ...] = (AUTO, *COMBINE_METHODS)
# AUC differences below this are noise on a valid split of a few hundred studies: the simpler candidate wins
SELECTION_TOLERANCE = 0.005
# all subsets of at least two members up to this many members (26 subsets at 5; 247 at 8 would cost minutes)
MAX_MEMBERS_FOR_SUBSETS = 5
# ties within the tolerance go to fewer members, then to the method earlier here
_SIMPLICITY = {method: rank for rank, method in enumerate(COMBINE_METHODS)}
SELECTION_RULE = (
    "highest out-of-fold study AUC on the fitting split; candidates within `tolerance` of the highest "
    "go to the simplest: fewest members, then mean < weighted_mean < vote < stacking, then the higher AUC. "
    "Each member alone is a candidate, uncalibrated, scoring exactly its own study AUC, so the chosen "
    "candidate's out-of-fold study AUC is never below the best member's."
)
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
    # the members the combination uses; None (files written before selection existed) means all of them
    active_members: list[str] | None = None
    # what ``combine="auto"`` compared and why it chose this combination (empty when combine was pinned)
    selection: dict = field(default_factory=dict)

    # -- applying -----------------------------------------------------------------------
    @property
    def active_index(self) -> list[int]:
        """Columns of ``P`` the combination reads, in member order."""
        if self.active_members is None:
            return list(range(len(self.members)))
        unknown = [name for name in self.active_members if name not in self.members]
        if unknown or not self.active_members:
            raise ValueError(f"active_members must be a non-empty subset of {self.members}, got {self.active_members}")
        return [j for j, name in enumerate(self.members) if name in self.active_members]

    @property
    def used_members(self) -> list[str]:
        return [self.members[j] for j in self.active_index]

    def member_probabilities(self, P: np.ndarray) -> np.ndarray:
        """Each member's probabilities on its own calibrated scale, shape ``(N, M)``."""
        P = self._check(P)
        return np.column_stack([cal(P[:, j]) for j, cal in enumerate(self.member_calibrators)])

    def combined_scores(self, P: np.ndarray) -> np.ndarray:
        """The active members combined per image, before the final calibration."""
        Q, index = self._check(P), self.active_index
        if len(index) < Q.shape[1]:  # all members: the columns as they are, so that sums round as they always did
            Q = Q[:, index]
        else:
            index = slice(None)
        if self.combine == "mean":
            return Q.mean(axis=1)
        if self.combine == "weighted_mean":
            w = np.asarray(self.weights, dtype=float)[index]
            return Q @ (w / w.sum())
        if self.combine == "vote":
            return (Q > np.asarray(self.member_thresholds)[index][None, :]).mean(axis=1)
        coef = np.asarray(self.stacking["coef"], dtype=float)[index]
        return _sigmoid(_logit(Q) @ coef + self.stacking["intercept"])

    def __call__(self, P: np.ndarray) -> np.ndarray:
        """Calibrated ensemble probability per image."""
        return np.clip(self.calibrator(self.combined_scores(P)), 0.0, 1.0)

    @property
    def ranking_is_fitted(self) -> bool:
        """Whether fitting changed how studies rank (weights, votes, stacking, isotonic ties, a
        selection among candidates), so that figures on the fit split itself need cross-fitting
        to be honest. A plain mean under a monotone calibration ranks as the members do."""
        return self.combine != "mean" or self.calibration == "isotonic" or bool(self.selection.get("candidates"))

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
    active_members: Sequence[str] | None = None,
    cv_folds: int = 5,
    selection_tolerance: float = SELECTION_TOLERANCE,
    seed: int = 0,
) -> FittedEnsemble:
    """Fit the whole chain on labelled image-level member probabilities (MURA's valid split).

    Labels are per study (MURA's), repeated on each image. ``weights`` are used by
    ``weighted_mean``; ``None`` weighs each member by how far its study AUC is above chance.
    ``active_members`` restricts the combination to those members (all by default); the others
    are still calibrated, to be reported. ``combine="auto"`` chooses the method and the active
    members with :func:`select_combination` (``cv_folds``, ``selection_tolerance`` and ``seed``
    are its settings) and records the comparison in ``selection``.
    """
    _check_choice("combine", combine, COMBINE_CHOICES)
    _check_choice("calibration", calibration, CALIBRATIONS)
    _check_choice("aggregation", aggregation, tuple(AGGREGATIONS))
    P = np.asarray(P, dtype=float)
    y = np.asarray(labels, dtype=int)
    if P.ndim != 2 or P.shape != (len(y), len(members)):
        raise ValueError(f"expected probabilities of shape ({len(y)}, {len(members)}), got {P.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("fitting an ensemble needs both normal and abnormal studies")
    recipe = {"calibration": calibration, "aggregation": aggregation,
              "weights": None if weights is None else [float(w) for w in weights],
              "min_studies_per_class": min_studies_per_class, "target_sensitivity": target_sensitivity,
              "target_specificity": target_specificity}
    if combine == AUTO:
        selection = select_combination(P, y, studies, body_parts, members, n_folds=cv_folds,
                                       tolerance=selection_tolerance, seed=seed, **recipe)
        chosen = next((c for c in selection["candidates"] if c["name"] == selection["chosen"]), selection.get("fallback"))
        fitted = fit_ensemble_parameters(P, y, studies, body_parts, members, combine=chosen["combine"],
                                         active_members=chosen["members"], **{**recipe, "calibration": chosen["calibration"]})
        fitted.selection = selection
        return fitted
    active = list(members) if active_members is None else [m for m in members if m in set(active_members)]
    if active_members is not None and (not active or len(active) != len(set(active_members))):
        raise ValueError(f"active_members must be a non-empty subset of {list(members)}, got {list(active_members)}")
    study_index = _study_index(studies)
    member_auc = [_study_auc(P[:, j], y, study_index, aggregation) for j in range(P.shape[1])]
    fitted = _fit_combination(P, y, members, combine, calibration, aggregation,
                              _auto_weights(member_auc) if weights is None else weights, active)
    fitted.member_calibrators = [Calibrator(calibration).fit(P[:, j], y) for j in range(P.shape[1])]
    fitted.member_thresholds = [operating_points(y, P[:, j])[OperatingPoint.YOUDEN] for j in range(P.shape[1])]
    p_study, y_study, part_study = _study_table(fitted(P), y, studies, body_parts, aggregation)
    targets = {"target_sensitivity": target_sensitivity, "target_specificity": target_specificity}
    fitted.thresholds = _fit_thresholds(p_study, y_study, part_study, min_studies_per_class, targets)
    fitted.fit_summary = {
        "n_images": int(len(y)),
        "n_studies": int(len(y_study)),
        "member_study_auc": dict(zip(members, member_auc)),
        "targets": targets,
        "min_studies_per_class": min_studies_per_class,
        # the exact recipe fitted, which cross-fitting repeats on each fold (never "auto": the choice is kept)
        "settings": {"combine": combine, **recipe, "active_members": active},
    }
    return fitted


def _auto_weights(member_auc: Sequence[float]) -> list[float]:
    return [max(auc - 0.5, 0.01) if not math.isnan(auc) else 0.01 for auc in member_auc]


def _fit_combination(P: np.ndarray, y: np.ndarray, members: Sequence[str], combine: str, calibration: str,
                     aggregation: str, weights: Sequence[float], active: Sequence[str]) -> FittedEnsemble:
    """Only what the ensemble's probabilities depend on (combination and final calibration):
    cross-fitting refits this on every fold of every candidate, and thresholds and the members'
    own calibrations would only cost time there."""
    index = [list(members).index(m) for m in active]
    weighs_nothing = combine == "weighted_mean" and sum(weights[j] for j in index) <= 0
    if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0 or weighs_nothing:
        raise ValueError(f"weights must be {len(members)} non-negative numbers with a positive sum, got {list(weights)}")
    fitted = FittedEnsemble(members=list(members), combine=combine, calibration=calibration, aggregation=aggregation,
                            active_members=list(active))
    # a member left out weighs nothing, so that whatever reads the weights (heatmaps) leaves it out too
    fitted.weights = [float(w) if j in index else 0.0 for j, w in enumerate(weights)]
    if combine == "vote":
        fitted.member_thresholds = [operating_points(y, P[:, j])[OperatingPoint.YOUDEN] for j in range(P.shape[1])]
    if combine == "stacking":
        model = LogisticRegression(C=1.0).fit(_logit(P if len(index) == len(members) else P[:, index]), y)
        coef = np.zeros(len(members))
        coef[index] = model.coef_[0]
        fitted.stacking = {"coef": coef.tolist(), "intercept": float(model.intercept_[0])}
    fitted.calibrator = Calibrator(calibration).fit(fitted.combined_scores(P), y)
    return fitted


def _study_index(studies: Sequence[str]) -> list[np.ndarray]:
    """Each study's image positions, studies in first-seen order (as :func:`group_by_study`)."""
    return [np.asarray(index) for index in group_by_study({"study": s} for s in studies).values()]


def _study_auc(prob, labels, study_index: list[np.ndarray], aggregation: str) -> float:
    """Study AUC as ``mura-monai evaluate`` computes it: the same reduction over the same images
    in the same order, so that a member's AUC here and there are the same number."""
    reduce = AGGREGATIONS[aggregation]
    prob, labels = np.asarray(prob, dtype=float), np.asarray(labels)
    p = [float(reduce(prob[index])) for index in study_index]
    y = [int(labels[index[0]]) for index in study_index]
    return float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan")


def patients_of_studies(studies: Sequence[str]) -> list[str]:
    """The patient of each study, for folds that keep a patient's studies together: a MURA study
    path's parent folder (``.../XR_WRIST/patient11185/study1_positive`` -> ``patient11185``, the
    same patient across body parts), or the study itself when its name has no folder."""
    return [PurePosixPath(str(s)).parent.name or str(s) for s in studies]


def _folds(labels: np.ndarray, studies: Sequence[str], groups: Sequence[str], n_folds: int, seed: int) -> list:
    """``(train, test)`` index pairs that keep each group's images together and balance labels."""
    n_pos_studies = len({s for s, lab in zip(studies, labels) if lab == 1})
    n_neg_studies = len(set(studies)) - n_pos_studies
    folds = min(n_folds, n_pos_studies, n_neg_studies, len(set(groups)))
    if folds < 2:
        raise ValueError("cross-fitting needs at least 2 normal and 2 abnormal studies")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    split = list(splitter.split(np.zeros(len(labels)), labels, np.asarray(groups)))
    if any(len(np.unique(labels[train])) < 2 for train, _ in split):
        raise ValueError("cross-fitting needs both normal and abnormal studies outside each fold")
    return split


def _out_of_fold(P, y, studies, parts, members, folds, combine="mean", calibration="platt", aggregation="mean",
                 weights=None, active_members=None, **fit_kwargs) -> np.ndarray:
    """Each fold's images scored by the recipe refitted on the other folds."""
    out = np.full(len(y), np.nan)
    for train, test in folds:
        if combine == AUTO:  # a selection nested in each fold: the whole fit, selection included
            fitted = fit_ensemble_parameters(
                P[train], y[train], [studies[i] for i in train], [parts[i] for i in train], members, combine=combine,
                calibration=calibration, aggregation=aggregation, weights=weights, **fit_kwargs)
        else:
            _check_choice("combine", combine, COMBINE_METHODS)
            w = [1.0] * P.shape[1] if combine != "weighted_mean" else weights  # only weighted_mean reads them
            if w is None:
                index = _study_index([studies[i] for i in train])
                w = _auto_weights([_study_auc(P[train, j], y[train], index, aggregation) for j in range(P.shape[1])])
            fitted = _fit_combination(P[train], y[train], members, combine, calibration, aggregation, w,
                                      list(members) if active_members is None else active_members)
        out[test] = fitted(P[test])
    return out


def cross_fitted_probabilities(
    P: np.ndarray,
    labels: Sequence[int],
    studies: Sequence[str],
    body_parts: Sequence[str],
    members: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    **fit_kwargs,
) -> np.ndarray:
    """Out-of-fold ensemble probabilities per image: each study scored by a chain fitted on the
    other folds' studies, so that metrics of a fitted ensemble on its own fit split are honest.

    Folds keep a group's images together and balance the labels (StratifiedGroupKFold); groups
    are the studies unless given (:func:`patients_of_studies` gives patients, as the selection uses).
    """
    P = np.asarray(P, dtype=float)
    y = np.asarray(labels, dtype=int)
    folds = _folds(y, studies, list(studies) if groups is None else list(groups), n_folds, seed)
    return _out_of_fold(P, y, list(studies), list(body_parts), members, folds, **fit_kwargs)


def evaluation_probabilities(
    fitted: FittedEnsemble,
    P: np.ndarray,
    labels: Sequence[int],
    studies: Sequence[str],
    body_parts: Sequence[str],
    fitted_on_these: bool,
    n_folds: int = 5,
) -> tuple[np.ndarray, bool]:
    """The ensemble's image probabilities to measure it by on a labelled split, and whether they
    are cross-fitted: they are when it was fitted on these very studies and fitting changed how
    they rank. A selection (``combine="auto"``) is cross-fitted on its own folds with the chosen
    recipe, which reproduces the out-of-fold AUC recorded for the chosen candidate."""
    if not (fitted_on_these and fitted.ranking_is_fitted):
        return fitted(P), False
    recipe = dict(fitted.fit_summary.get("settings") or {
        "combine": fitted.combine, "calibration": fitted.calibration, "aggregation": fitted.aggregation,
        "weights": None})
    folds = fitted.selection.get("folds")
    if folds:
        split = {"n_folds": int(folds["n_folds"]), "seed": int(folds["seed"]), "groups": patients_of_studies(studies)}
    else:
        split = {"n_folds": n_folds}
    return cross_fitted_probabilities(P, labels, studies, body_parts, fitted.members, **split, **recipe), True


def _candidates(members: Sequence[str], calibration: str) -> list[dict]:
    """Each member alone, then mean, weighted mean, vote (three members or more: with two it
    only says "both", "one" or "neither") and stacking of each subset of at least two members
    (only of all members when there are more than ``MAX_MEMBERS_FOR_SUBSETS``).

    A member alone is uncalibrated: a calibration applied per image is monotone, but it can
    reorder studies once their images are averaged, and the point of this candidate is to
    score exactly as the member does."""
    members = list(members)
    candidates = [{"name": m, "members": [m], "combine": "mean", "calibration": "none"} for m in members]
    sizes = range(2, len(members) + 1) if len(members) <= MAX_MEMBERS_FOR_SUBSETS else [len(members)]
    for size in sizes:
        for subset in combinations(members, size):
            for method in COMBINE_METHODS:
                if method == "vote" and size < 3:
                    continue
                candidates.append({"name": f"{method}({'+'.join(subset)})", "members": list(subset), "combine": method,
                                   "calibration": calibration})
    return candidates


def _simplicity(candidate: dict) -> tuple[int, int]:
    return len(candidate["members"]), _SIMPLICITY[candidate["combine"]]


def select_combination(
    P: np.ndarray,
    labels: Sequence[int],
    studies: Sequence[str],
    body_parts: Sequence[str],
    members: Sequence[str],
    calibration: str = "platt",
    weights: Sequence[float] | None = None,
    n_folds: int = 5,
    tolerance: float = SELECTION_TOLERANCE,
    seed: int = 0,
    **fit_kwargs,
) -> dict:
    """Every candidate combination scored by out-of-fold study AUC on these studies, and the one
    :data:`SELECTION_RULE` chooses: what ``ensemble.json`` keeps under ``selection``.

    All candidates share the same folds, grouped by patient (:func:`patients_of_studies`), so that no
    patient's studies help fit the combination that scores them; ``mura-monai evaluate`` on
    the same split repeats these folds, so it reports the chosen candidate's AUC recorded here.
    The choice itself is made on all folds' scores (not nested), which flatters the chosen
    candidate a little when many candidates are close.
    """
    P = np.asarray(P, dtype=float)
    y = np.asarray(labels, dtype=int)
    studies, parts = list(studies), list(body_parts)
    record = {"requested": AUTO, "rule": SELECTION_RULE, "tolerance": tolerance,
              "metric": "study AUC, out of fold, on the fitting split"}
    try:
        folds = _folds(y, studies, patients_of_studies(studies), n_folds, seed)
    except ValueError as err:  # a handful of studies: nothing to compare on, so MURA's plain mean of all members
        everyone = {"name": f"mean({'+'.join(members)})", "members": list(members), "combine": "mean",
                    "calibration": calibration}
        return {**record, "candidates": [], "fallback": everyone, "chosen": everyone["name"],
                "reason": f"no comparison ({err}): the mean of all members"}
    study_index = _study_index(studies)
    aggregation = fit_kwargs.get("aggregation", "mean")
    candidates = []
    for candidate in _candidates(members, calibration):
        index = [list(members).index(m) for m in candidate["members"]]
        if weights is not None and candidate["combine"] == "weighted_mean" and sum(weights[j] for j in index) <= 0:
            continue  # pinned weights that leave this subset nothing to weigh
        prob = _out_of_fold(P, y, studies, parts, members, folds, combine=candidate["combine"],
                            calibration=candidate["calibration"], active_members=candidate["members"],
                            weights=weights, **fit_kwargs)
        candidates.append({**candidate, "oof_study_auc": _study_auc(prob, y, study_index, aggregation)})
    scored = [c for c in candidates if not math.isnan(c["oof_study_auc"])]
    best = max(scored, key=lambda c: c["oof_study_auc"])
    eligible = [c for c in scored if c["oof_study_auc"] >= best["oof_study_auc"] - tolerance]
    chosen = min(eligible, key=lambda c: (*_simplicity(c), -c["oof_study_auc"]))
    singles = [c for c in scored if len(c["members"]) == 1]
    best_member = max(singles, key=lambda c: c["oof_study_auc"])
    if chosen is best:
        reason = f"{chosen['name']} has the highest out-of-fold study AUC ({chosen['oof_study_auc']:.3f})"
    else:
        reason = (f"{chosen['name']} ({chosen['oof_study_auc']:.3f}) is the simplest of the {len(eligible)} candidates "
                  f"within {tolerance} of the highest, {best['name']} ({best['oof_study_auc']:.3f})")
    return {
        **record,
        "folds": {"n_folds": len(folds), "seed": seed, "groups": "patient"},
        "candidates": candidates,
        "chosen": chosen["name"],
        "chosen_oof_study_auc": chosen["oof_study_auc"],
        "best_member": best_member["name"],
        "best_member_study_auc": best_member["oof_study_auc"],
        "reason": reason,
    }


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
