from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mura_monai.metrics import _metrics_per_row, aggregate_studies, binary_metrics, bootstrap_intervals, evaluate_predictions


def test_binary_metrics_counts_and_ratios():
    m = binary_metrics([1, 1, 0, 0, 1], [0.9, 0.4, 0.2, 0.7, 0.8])
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(roc_auc_score([1, 1, 0, 0, 1], [0.9, 0.4, 0.2, 0.7, 0.8]))


def test_threshold_is_strictly_greater():
    assert binary_metrics([1, 0], [0.5, 0.1])["tp"] == 0
    assert binary_metrics([1, 0], [0.5, 0.1], threshold=0.4)["tp"] == 1


def test_single_class_gives_nan_auc_not_an_error():
    assert math.isnan(binary_metrics([1, 1, 1], [0.2, 0.6, 0.9])["auc"])


def test_vectorised_bootstrap_metrics_equal_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (20, 50))
    p = np.round(rng.random((20, 50)), 1)  # rounded: ties must be handled like sklearn
    rows = _metrics_per_row(y, p, 0.5)
    for i in range(20):
        assert rows["auc"][i] == pytest.approx(roc_auc_score(y[i], p[i]))
        assert rows["kappa"][i] == pytest.approx(cohen_kappa_score(y[i], (p[i] > 0.5).astype(int)))
        ref = binary_metrics(y[i], p[i])
        for name in ("accuracy", "sensitivity", "specificity", "precision", "f1"):
            assert rows[name][i] == pytest.approx(ref[name])


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_data():
    rng = np.random.default_rng(0)
    def sample(n):
        y = rng.integers(0, 2, n)
        return y, np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1)
    y, p = sample(60)
    small = bootstrap_intervals(y, p, n_bootstrap=400)
    assert small["auc"][0] <= binary_metrics(y, p)["auc"] <= small["auc"][1]
    y2, p2 = sample(2000)
    big = bootstrap_intervals(y2, p2, n_bootstrap=400)
    assert big["auc"][1] - big["auc"][0] < small["auc"][1] - small["auc"][0]


def test_study_aggregation_mean_and_max():
    records = [
        {"study": "a", "label": 1, "probability": 0.2, "body_part": "XR_HAND"},
        {"study": "a", "label": 1, "probability": 0.8, "body_part": "XR_HAND"},
        {"study": "b", "label": 0, "probability": 0.1, "body_part": "XR_WRIST"},
    ]
    by_mean = {s["study"]: s for s in aggregate_studies(records)}
    assert by_mean["a"]["probability"] == pytest.approx(0.5) and by_mean["a"]["n_images"] == 2
    assert {s["study"]: s["probability"] for s in aggregate_studies(records, "max")}["a"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="mode"):
        aggregate_studies(records, "mode")


def test_conflicting_labels_within_a_study_are_refused():
    with pytest.raises(ValueError, match="study a"):
        aggregate_studies([{"study": "a", "label": 1, "probability": 0.2}, {"study": "a", "label": 0, "probability": 0.3}])


def test_evaluate_predictions_document_shape():
    records = []
    for i in range(12):
        part = "XR_HAND" if i % 2 else "XR_WRIST"
        label = int(i % 3 == 0)
        for view in range(2):
            records.append({"study": f"s{i}", "label": label, "probability": 0.3 + 0.5 * label + 0.01 * view, "body_part": part})
    doc = evaluate_predictions(records, n_bootstrap=50)
    assert doc["n_studies"] == 12 and doc["n_images"] == 24
    assert set(doc["per_body_part"]) == {"XR_HAND", "XR_WRIST"}
    for block in (doc["study"], doc["image"], *doc["per_body_part"].values()):
        for key in ("auc", "kappa", "accuracy", "sensitivity", "specificity", "precision", "f1", "tp", "fp", "tn", "fn",
                    "threshold", "ci95"):
            assert key in block
    assert doc["study"]["auc"] == 1.0 and doc["study"]["tp"] == 4
    assert sum(b["n"] for b in doc["per_body_part"].values()) == 12
