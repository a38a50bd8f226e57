"""The evaluation report's figures: ROC and precision-recall curves, and a calibration plot.

A table of AUCs says how well studies are ranked, but not where a threshold should go, nor
whether a probability of 0.8 means "abnormal four times in five"; the curves and the
reliability diagram answer that. The figures are drawn on study-level predictions (the records
of ``predictions.json``'s ``studies``: ``body_part``, ``label``, ``probability``), because MURA
is labelled per study.

Figures are built on matplotlib's ``Figure`` with the Agg canvas directly, not through
``pyplot``: no global backend is switched and nothing is left open in a long-running process.
Evaluation folders are often small or lopsided (a body part with only normal studies, a single
study), so every figure draws what it can and writes a note on the plot instead of raising.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from mura_monai.constants import BODY_PARTS
from mura_monai.operating_points import OperatingPoint, sensitivity_specificity

__all__ = [
    "POINT_LABELS",
    "brier_score",
    "calibration_figure",
    "degenerate_notes",
    "point_label",
    "pr_figure",
    "roc_figure",
    "study_groups",
]

POINT_LABELS: dict[str, str] = {**{point.value: point.label for point in OperatingPoint}, "threshold": "threshold used"}
_MARKERS = {"pr_equal": "o", "youden": "s", "high_sensitivity": "^", "high_specificity": "v", "threshold": "D"}
_ALL = "All studies"
_DPI = 110


def point_label(name: str) -> str:
    """Readers see 'Youden's J', code and tests see 'youden': one mapping keeps both in step."""
    return POINT_LABELS.get(name, name.replace("_", " "))


def _arrays(studies: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities, leaving out studies whose probability is not a finite number
    (a failed inference must not turn a whole curve into NaN)."""
    y = np.asarray([int(s["label"]) for s in studies], dtype=int)
    p = np.asarray([float(s["probability"]) for s in studies], dtype=float)
    keep = np.isfinite(p)
    return y[keep], p[keep]


def _both_classes(y: np.ndarray) -> bool:
    return y.size > 0 and y.min() != y.max()


def study_groups(studies: Sequence[Mapping]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, labels, probabilities)`` for all studies first, then each body part in MURA's
    order, so that colours and legend rows are the same in every figure."""
    groups = [(_ALL, *_arrays(studies))]
    parts = sorted({s.get("body_part", "UNKNOWN") for s in studies}, key=lambda p: (p not in BODY_PARTS, p))
    for part in parts:
        groups.append((part, *_arrays([s for s in studies if s.get("body_part", "UNKNOWN") == part])))
    return groups


def brier_score(studies: Sequence[Mapping]) -> float:
    """Mean squared gap between probability and label; NaN without studies. Computed directly
    because scikit-learn's ``brier_score_loss`` refuses labels of one class only."""
    y, p = _arrays(studies)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def degenerate_notes(studies: Sequence[Mapping]) -> list[str]:
    """Why a figure shows less than expected, in words for the page beside it."""
    notes = []
    n_bad = sum(1 for s in studies if not math.isfinite(float(s["probability"])))
    if n_bad:
        notes.append(f"{n_bad} {'study' if n_bad == 1 else 'studies'} without a finite probability "
                     "left out of the figures and operating points.")
    groups = study_groups(studies)
    _, y, _ = groups[0]
    if y.size == 0:
        notes.append("No studies: no curves can be drawn.")
    elif not _both_classes(y):
        notes.append(_undefined("ROC and PR curves, AUC and operating points", y).replace(":\n", ": ") + ".")
    else:
        single = [name for name, gy, _ in groups[1:] if gy.size and not _both_classes(gy)]
        if single:
            notes.append("One class only, so no curve for: " + ", ".join(single) + ".")
    return notes


def _colours(n: int) -> list:
    """Black for all studies, then a qualitative palette for the body parts."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return ["black"] + [palette[i % len(palette)] for i in range(max(n - 1, 0))]


def _new_figure(width: float = 8.6, height: float = 5.4) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    return path


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, wrap=True,
            bbox={"boxstyle": "round", "facecolor": "#fff6d5", "edgecolor": "#c9a227"})


def _footnote(ax, lines: list[str]) -> None:
    if lines:
        ax.text(0.0, -0.13, "\n".join(lines), transform=ax.transAxes, ha="left", va="top", fontsize=8, color="#555")


def _unit_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#ddd", linewidth=0.6)


def _legend(ax) -> None:
    """Outside the square axes, on the right: up to eight curves and five points would hide the
    curves' corners inside."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, borderaxespad=0)


def _points(ax, y: np.ndarray, p: np.ndarray, points: Mapping[str, float] | None, pr: bool) -> None:
    """Operating points on the all-studies curve: (1 - specificity, sensitivity) on the ROC,
    (recall, precision) on the PR curve."""
    for name, t in (points or {}).items():
        if t is None or not math.isfinite(t):
            continue
        sens, spec = sensitivity_specificity(y, p, t)
        called = p > t
        label = f"{point_label(name)}: t={t:.3f} (sens {sens:.2f}, spec {spec:.2f})"
        if pr and not called.any():  # precision undefined: keep the legend row, say why there is no marker
            x, yy, label = [], [], f"{point_label(name)}: t={t:.3f} (nothing called abnormal)"
        elif pr:
            x, yy = [sens], [float(y[called].mean())]
        else:
            x, yy = [1.0 - spec], [sens]
        ax.plot(x, yy, linestyle="none", marker=_MARKERS.get(name, "P"), markersize=8, markerfacecolor="white",
                markeredgecolor="black", markeredgewidth=1.6, zorder=5, label=label)


def _plot_groups(ax, groups, plot_one) -> list[str]:
    """Draw one curve per group with both classes (all studies thick, on top); returns the body
    parts that had a single class and so no curve."""
    skipped = []
    for (name, y, p), colour in zip(groups, _colours(len(groups))):
        if not _both_classes(y):
            if name != _ALL and y.size:
                skipped.append(name)
            continue
        style = {"color": colour, "linewidth": 2.4 if name == _ALL else 1.3, "zorder": 4 if name == _ALL else 3}
        plot_one(ax, name, y, p, style)
    return skipped


def roc_figure(studies: Sequence[Mapping], path: str | Path, points: Mapping[str, float] | None = None) -> Path:
    """ROC curves of all studies and of each body part, AUC in the legend; ``points`` (name ->
    threshold, as from ``operating_points``) are marked on the all-studies curve, so a reader
    sees what each threshold trades."""
    groups = study_groups(studies)
    fig, ax = _new_figure()
    ax.plot([0, 1], [0, 1], linestyle=":", color="#999", linewidth=1, label="chance")
    def roc(ax, name, y, p, style):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, **style, label=f"{name} (AUC {roc_auc_score(y, p):.3f}, n={y.size})")

    skipped = _plot_groups(ax, groups, roc)
    _, y, p = groups[0]
    if _both_classes(y):
        _points(ax, y, p, points, pr=False)
    else:
        _note(ax, _undefined("ROC curve", y))
    _unit_axes(ax, "1 - specificity (false positive rate)", "sensitivity (true positive rate)")
    ax.set_title("ROC curves (study level)")
    _legend(ax)
    _footnote(ax, [f"No curve (one class only): {', '.join(skipped)}"] if skipped and _both_classes(y) else [])
    return _save(fig, path)


def pr_figure(studies: Sequence[Mapping], path: str | Path, points: Mapping[str, float] | None = None) -> Path:
    """Precision-recall curves (average precision in the legend): with few abnormal studies a
    ROC curve looks good while most positive calls are wrong, which only this plot shows."""
    groups = study_groups(studies)
    fig, ax = _new_figure()
    def pr(ax, name, y, p, style):
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, **style, drawstyle="steps-post",
                label=f"{name} (AP {average_precision_score(y, p):.3f}, n={y.size})")

    skipped = _plot_groups(ax, groups, pr)
    _, y, p = groups[0]
    if _both_classes(y):
        ax.axhline(y.mean(), linestyle=":", color="#999", linewidth=1, label=f"prevalence ({y.mean():.2f})")
        _points(ax, y, p, points, pr=True)
    else:
        _note(ax, _undefined("Precision-recall curve", y))
    _unit_axes(ax, "recall (sensitivity)", "precision (positive predictive value)")
    ax.set_title("Precision-recall curves (study level)")
    _legend(ax)
    _footnote(ax, [f"No curve (one class only): {', '.join(skipped)}"] if skipped and _both_classes(y) else [])
    return _save(fig, path)


def _undefined(what: str, y: np.ndarray) -> str:
    if y.size == 0:
        return f"{what} undefined:\nno studies"
    kind = "abnormal" if y[0] == 1 else "normal"
    return f"{what} undefined:\n" + (f"the only study is {kind}" if y.size == 1 else f"all {y.size} studies are {kind}")


def calibration_figure(studies: Sequence[Mapping], path: str | Path, n_bins: int = 10) -> Path:
    """Reliability diagram (observed abnormal fraction per probability bin, against the
    diagonal) over a histogram of the probabilities by true label: a model can rank well and
    still over- or under-state its probabilities, which matters once a threshold is fixed."""
    y, p = _arrays(studies)
    fig = Figure(figsize=(6.4, 7.0), dpi=_DPI)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.08})
    top.plot([0, 1], [0, 1], linestyle="--", color="#888", linewidth=1, label="perfectly calibrated")
    brier = brier_score(studies)
    if y.size:
        frac_pos, mean_pred = calibration_curve(y, np.clip(p, 0.0, 1.0), n_bins=n_bins, strategy="uniform")
        top.plot(mean_pred, frac_pos, marker="o", color="black", linewidth=1.8, label=f"all studies (n={y.size})")
        if not _both_classes(y):
            top.text(0.03, 0.97, _undefined("Discrimination", y).replace("\n", " "), transform=top.transAxes,
                     ha="left", va="top", fontsize=9, color="#7a5c00")
    else:
        _note(top, "No studies: nothing to calibrate")
    top.set_xlim(-0.01, 1.01)
    top.set_ylim(-0.01, 1.01)
    top.set_ylabel("observed fraction abnormal")
    top.set_title(f"Calibration (study level), Brier score {brier:.3f}" if math.isfinite(brier) else "Calibration (study level)")
    top.grid(True, color="#ddd", linewidth=0.6)
    top.legend(loc="lower right", fontsize=8)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if y.size:
        bottom.hist([p[y == 0], p[y == 1]], bins=edges, stacked=True, color=["#4c9be8", "#e8704c"],
                    label=[f"normal (n={int((y == 0).sum())})", f"abnormal (n={int((y == 1).sum())})"])
        bottom.legend(loc="upper center", fontsize=8, ncol=2, frameon=False)
        bottom.set_ylim(0, bottom.get_ylim()[1] * 1.3)  # headroom for the legend above the bars
    bottom.set_xlabel("predicted probability of abnormality")
    bottom.set_ylabel("studies")
    bottom.grid(True, axis="y", color="#ddd", linewidth=0.6)
    return _save(fig, path)
