"""Decision thresholds on a probability, chosen from labelled predictions.

A probability alone does not tell a reader what to do; a threshold does, and which threshold is
right depends on the use. Han, Lee and Kim report the point where precision equals recall; ROC analysis
usually takes Youden's J; clinical products offer a high-sensitivity point (triage: miss little)
and a high-specificity point (few false alarms). All four come from scikit-learn's curves.

Reference: Han S.J., Lee C.I., Kim S.-J., "Development of medical aid artificial intelligence
through detection of musculoskeletal X-ray abnormalities using artificial neural networks in medical
image data".
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

__all__ = ["DEFAULT_OPERATING_POINT", "OPERATING_POINTS", "OperatingPoint", "operating_points", "sensitivity_specificity"]


class OperatingPoint(StrEnum):
    """A named way of choosing the threshold, with the words each audience reads it by: a short
    label (figures, tables), the meaning of its code in a DICOM SR, and one line of help (report)."""

    PR_EQUAL = "pr_equal"
    YOUDEN = "youden"
    HIGH_SENSITIVITY = "high_sensitivity"
    HIGH_SPECIFICITY = "high_specificity"

    @property
    def label(self) -> str:
        return _WORDS[self][0]

    @property
    def dicom_meaning(self) -> str:
        return _WORDS[self][1]

    @property
    def description(self) -> str:
        return _WORDS[self][2]


_WORDS = {
    OperatingPoint.PR_EQUAL: ("precision = recall", "Precision equals recall",
                              "where precision equals recall (the operating point of Han, Lee and Kim)."),
    OperatingPoint.YOUDEN: ("Youden's J", "Maximum Youden index", "maximises sensitivity + specificity − 1."),
    OperatingPoint.HIGH_SENSITIVITY: ("high sensitivity", "High sensitivity",
                                      "the highest threshold keeping sensitivity ≥ 0.95 (triage: miss little)."),
    OperatingPoint.HIGH_SPECIFICITY: ("high specificity", "High specificity",
                                      "the lowest threshold keeping specificity ≥ 0.95 (few false alarms)."),
}
OPERATING_POINTS: tuple[str, ...] = tuple(point.value for point in OperatingPoint)
# the ensemble's and the review's default where a bundle names none
DEFAULT_OPERATING_POINT = OperatingPoint.YOUDEN


def _finite(thresholds: np.ndarray) -> np.ndarray:
    """roc_curve's first threshold is +inf (nothing called positive); clip it to 1."""
    return np.minimum(thresholds, 1.0)


def operating_points(
    y_true: Sequence[int], prob: Sequence[float], target_sensitivity: float = 0.95, target_specificity: float = 0.95
) -> dict[str, float]:
    """Thresholds ``t`` at which to call a prediction abnormal when ``p > t`` (as :func:`binary_metrics` does).

    - ``pr_equal``: where precision and recall cross (Han, Lee and Kim's operating point).
    - ``youden``: maximises sensitivity + specificity - 1.
    - ``high_sensitivity``: the highest threshold whose sensitivity reaches ``target_sensitivity``.
    - ``high_specificity``: the lowest threshold whose specificity reaches ``target_specificity``.

    Thresholds sit just below the score they admit, so that ``p > t`` calls that score abnormal.

    Raises:
        ValueError: when the labels hold only one class (no curve exists).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("operating points need both normal and abnormal examples")
    fpr, tpr, roc_t = roc_curve(y, p, drop_intermediate=False)
    roc_t = _finite(roc_t)
    youden = roc_t[int(np.argmax(tpr - fpr))]
    sens_ok = np.flatnonzero(tpr >= target_sensitivity)
    high_sens = roc_t[sens_ok[0]]
    spec_ok = np.flatnonzero(1.0 - fpr >= target_specificity)
    high_spec = roc_t[spec_ok[-1]]
    precision, recall, pr_t = precision_recall_curve(y, p)
    gap = np.abs(precision[:-1] - recall[:-1])
    pr_equal = pr_t[int(np.argmin(gap))]
    return {name: _below(float(t), p) for name, t in
            zip(OPERATING_POINTS, (pr_equal, youden, high_sens, high_spec))}


def _below(threshold: float, prob: np.ndarray) -> float:
    """The midpoint between ``threshold`` (a score from the curve) and the next lower score."""
    lower = prob[prob < threshold]
    if lower.size == 0:
        return float(max(threshold - 1e-6, 0.0))
    return float((threshold + lower.max()) / 2.0)


def sensitivity_specificity(y_true: Sequence[int], prob: Sequence[float], threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``p > threshold`` is called abnormal (NaN for an absent class)."""
    y = np.asarray(y_true, dtype=int)
    called = np.asarray(prob, dtype=float) > threshold
    pos, neg = y == 1, y == 0
    sens = float(called[pos].mean()) if pos.any() else float("nan")
    spec = float((~called[neg]).mean()) if neg.any() else float("nan")
    return sens, spec
