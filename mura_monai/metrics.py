"""Image- and study-level metrics, per body part, with bootstrap 95% intervals.

MURA is labelled per study, so the figures that matter are study-level: a study's probability
is an aggregate (mean, as in the MURA baseline) of its images' probabilities. scikit-learn does
the maths; this module only groups predictions and resamples studies for the intervals.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from mura_monai.constants import BODY_PARTS

__all__ = [
    "AGGREGATIONS",
    "aggregate_studies",
    "group_by_study",
    "logit",
    "study_probabilities",
    "binary_metrics",
    "bootstrap_intervals",
    "evaluate_predictions",
    "paired_bootstrap",
    "METRIC_NAMES",
]

METRIC_NAMES = ("auc", "kappa", "accuracy", "sensitivity", "specificity", "precision", "f1")
AGGREGATIONS = {"mean": np.mean, "max": np.max, "median": np.median}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def binary_metrics(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5) -> dict:
    """Threshold-free (AUC) and thresholded metrics of one set of binary predictions.

    A prediction is abnormal when ``prob > threshold`` (MURA's rule). AUC is NaN when only one
    class is present, rather than an exception, because small body-part groups often are.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    pred = (p > threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    if len(np.unique(np.concatenate([y, pred]))) > 1:
        kappa = float(cohen_kappa_score(y, pred))
    else:
        kappa = float("nan")
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "auc": auc,
        "kappa": kappa,
        "accuracy": _ratio(tp + tn, len(y)),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "threshold": float(threshold),
        "n": int(len(y)),
    }


def _metrics_per_row(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """``METRIC_NAMES`` for each row of (resamples, n) label/probability matrices at once.

    The same formulas as ``binary_metrics`` (which uses scikit-learn), vectorised over rows so a
    1000-resample bootstrap costs milliseconds; AUC is the Mann-Whitney statistic with average
    ranks for ties, which equals ``roc_auc_score``. Undefined values are NaN.
    """
    n = y.shape[1]
    pred = p > threshold
    pos = y == 1
    tp = (pred & pos).sum(1).astype(float)
    fp = (pred & ~pos).sum(1).astype(float)
    fn = (~pred & pos).sum(1).astype(float)
    tn = n - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        n_pos, n_neg = tp + fn, tn + fp
        ranks = rankdata(p, axis=1)
        auc = ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        observed = (tp + tn) / n
        expected = ((tp + fp) * n_pos + (tn + fn) * n_neg) / n**2
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)
        return {
            "auc": np.where((n_pos > 0) & (n_neg > 0), auc, np.nan),
            "kappa": kappa,
            "accuracy": observed,
            "sensitivity": tp / n_pos,
            "specificity": tn / n_neg,
            "precision": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def bootstrap_intervals(
    y_true: Sequence[int],
    prob: Sequence[float],
    threshold: float = 0.5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of every metric in ``METRIC_NAMES``.

    Units (images or studies) are resampled with replacement; resamples where a metric is
    undefined (one class only) are left out of that metric's interval.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if len(y) == 0 or n_bootstrap <= 0:
        return {name: [float("nan"), float("nan")] for name in METRIC_NAMES}
    idx = _resamples(len(y), n_bootstrap, seed)
    per_row = _metrics_per_row(y[idx], p[idx], threshold)
    return {name: _percentile_interval(per_row[name], alpha) for name in METRIC_NAMES}


def _resamples(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(n_bootstrap, n)`` indices drawn with replacement: the same draws for every metric and method."""
    return np.random.default_rng(seed).integers(0, n, (n_bootstrap, n))


def _percentile_interval(values: np.ndarray, alpha: float) -> list[float]:
    """The ``1 - alpha`` percentile interval of the defined (non-NaN) values; NaNs when none is."""
    values = values[~np.isnan(values)]
    if not values.size:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


PAIRED_METRICS = ("auc", "kappa")


def paired_bootstrap(
    y_true: Sequence[int],
    prob_method: Sequence[float],
    prob_baseline: Sequence[float],
    threshold_method: float = 0.5,
    threshold_baseline: float = 0.5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict]:
    """The difference (method minus baseline) of AUC and κ on the same units, with its interval.

    Both methods are scored on every resample of the same units (studies), so the interval is
    that of the difference itself: two methods that err on the same hard studies differ far less
    than their separate intervals suggest, and an interval built from separate resamples would
    call many real gains inconclusive. ``share_not_better`` is the resamples' share where the
    method does not beat the baseline (a one-sided bootstrap p-value).
    """
    y = np.asarray(y_true, dtype=int)
    a, b = np.asarray(prob_method, dtype=float), np.asarray(prob_baseline, dtype=float)
    if not (len(y) == len(a) == len(b)) or len(y) == 0:
        raise ValueError(f"paired predictions need the same units: {len(y)} labels, {len(a)} and {len(b)} probabilities")
    method, baseline = binary_metrics(y, a, threshold_method), binary_metrics(y, b, threshold_baseline)
    idx = _resamples(len(y), max(n_bootstrap, 0), seed)
    rows_a = _metrics_per_row(y[idx], a[idx], threshold_method) if n_bootstrap > 0 else {}
    rows_b = _metrics_per_row(y[idx], b[idx], threshold_baseline) if n_bootstrap > 0 else {}
    out = {}
    for name in PAIRED_METRICS:
        block = {"method": method[name], "baseline": baseline[name], "difference": method[name] - baseline[name],
                 "ci95": [float("nan"), float("nan")], "share_not_better": float("nan")}
        if n_bootstrap > 0:
            diff = rows_a[name] - rows_b[name]
            block["ci95"] = _percentile_interval(diff, alpha)
            defined = diff[~np.isnan(diff)]
            if defined.size:
                block["share_not_better"] = float(np.mean(defined <= 0))
        out[name] = block
    out["n"] = int(len(y))
    out["n_bootstrap"] = int(n_bootstrap)
    return out


def logit(p, eps: float = 1e-6) -> np.ndarray:
    """Log-odds of probabilities clipped to ``[eps, 1 - eps]``: a network's 0.0 or 1.0 would
    otherwise be an infinite logit and poison a calibration or a view-fusion fit."""
    from scipy.special import logit as _logit

    return _logit(np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps))


def group_by_study(records: Iterable) -> dict[str, list[int]]:
    """The positions of each study's records, studies in first-seen order: the one grouping that
    metrics, view fusion, ensemble fitting and inference share (records are dicts with a
    ``study`` key or objects with a ``study`` attribute)."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        study = record["study"] if isinstance(record, Mapping) else record.study
        groups.setdefault(study, []).append(i)
    return groups


def study_probabilities(records: Iterable[dict], aggregation: str = "mean") -> list[tuple[str, list[dict], float]]:
    """``(study, its image records, study probability)`` in first-seen order.

    The one place that turns image probabilities into study probabilities, for metrics and
    for inference alike. ``aggregation`` is one of ``AGGREGATIONS`` (``mean`` is MURA's rule).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
    reduce = AGGREGATIONS[aggregation]
    records = list(records)
    grouped = [(study, [records[i] for i in index]) for study, index in group_by_study(records).items()]
    return [(study, recs, float(reduce([r["probability"] for r in recs]))) for study, recs in grouped]


def aggregate_studies(records: Iterable[dict], aggregation: str = "mean") -> list[dict]:
    """Group labelled image predictions by ``study`` into one record per study.

    Each input record needs ``study``, ``probability`` and ``label``; ``body_part`` is carried over.
    """
    studies = []
    for study, recs, probability in study_probabilities(records, aggregation):
        labels = {int(r["label"]) for r in recs}
        if len(labels) != 1:
            raise ValueError(f"images of study {study} carry different labels {sorted(labels)}")
        studies.append(
            {
                "study": study,
                "body_part": recs[0].get("body_part", "UNKNOWN"),
                "label": labels.pop(),
                "probability": probability,
                "n_images": len(recs),
            }
        )
    return studies


def _with_intervals(y, p, threshold, n_bootstrap, seed) -> dict:
    out = binary_metrics(y, p, threshold)
    if n_bootstrap > 0:
        out["ci95"] = bootstrap_intervals(y, p, threshold, n_bootstrap=n_bootstrap, seed=seed)
    return out


def evaluate_predictions(
    records: Sequence[dict],
    threshold: float = 0.5,
    aggregation: str = "mean",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """The ``metrics.json`` document (docs/formats.md) from image-level predictions.

    Returns ``{"study": {...}, "image": {...}, "per_body_part": {part: {...}}, "n_studies": N,
    "n_images": M, "aggregation": ..., "studies": [...]}``; ``per_body_part`` holds study-level
    metrics, as MURA and the papers report them. Every metric block carries ``ci95`` intervals
    when ``n_bootstrap > 0``.
    """
    if not records:
        raise ValueError("no predictions to evaluate")
    studies = aggregate_studies(records, aggregation)
    doc = {
        "study": _with_intervals(
            [s["label"] for s in studies], [s["probability"] for s in studies], threshold, n_bootstrap, seed
        ),
        "image": _with_intervals(
            [int(r["label"]) for r in records], [r["probability"] for r in records], threshold, n_bootstrap, seed
        ),
        "per_body_part": {},
        "n_studies": len(studies),
        "n_images": len(records),
        "aggregation": aggregation,
    }
    parts = sorted({s["body_part"] for s in studies}, key=lambda p: (p not in BODY_PARTS, p))
    for part in parts:
        group = [s for s in studies if s["body_part"] == part]
        doc["per_body_part"][part] = _with_intervals(
            [s["label"] for s in group], [s["probability"] for s in group], threshold, n_bootstrap, seed
        )
    doc["studies"] = studies
    return doc
