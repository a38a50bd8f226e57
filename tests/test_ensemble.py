"""The fitted combination of members: calibration, combining, thresholds, uncertainty, storage."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from mura_monai.ensemble import (
    Calibrator,
    FittedEnsemble,
    cross_fitted_probabilities,
    fit_ensemble_parameters,
    study_uncertainty,
)
from mura_monai.operating_points import operating_points, sensitivity_specificity

PARTS = ["XR_WRIST", "XR_HAND", "XR_ELBOW"]


def _members_data(n_studies=120, seed=0, strengths=(2.0, 0.3)):
    """Image-level probabilities of members with different skill; 2 images per study."""
    rng = np.random.default_rng(seed)
    study_label = rng.integers(0, 2, n_studies)
    studies, labels, parts, rows = [], [], [], []
    for s, lab in enumerate(study_label):
        for _ in range(2):
            studies.append(f"s{s}")
            labels.append(int(lab))
            parts.append(PARTS[s % len(PARTS)])
            logits = [k * (lab - 0.5) * 2 + rng.normal(0, 1.0) for k in strengths]
            rows.append(1 / (1 + np.exp(-np.array(logits) * 0.5)))
    return np.array(rows), np.array(labels), studies, parts


def _study_auc(prob, labels, studies):
    by = {}
    for p, y, s in zip(prob, labels, studies):
        by.setdefault(s, ([], y))[0].append(p)
    return roc_auc_score([y for _, y in by.values()], [np.mean(p) for p, _ in by.values()])


def test_platt_calibration_lowers_brier_score_of_a_miscalibrated_score():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    score = np.clip(0.5 + 0.05 * (y - 0.5) + rng.normal(0, 0.02, 400), 0, 1)  # all near 0.5, overconfident spread
    calibrated = Calibrator("platt").fit(score, y)(score)
    assert brier_score_loss(y, calibrated) < brier_score_loss(y, score)
    assert roc_auc_score(y, calibrated) == pytest.approx(roc_auc_score(y, score))  # monotone: ranking kept


def test_isotonic_calibration_is_monotone_and_in_unit_interval():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    score = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    cal = Calibrator("isotonic").fit(score, y)
    grid = np.linspace(0, 1, 101)
    out = cal(grid)
    assert np.all(np.diff(out) >= -1e-12)
    assert out.min() >= 0 and out.max() <= 1


def test_unknown_choices_are_rejected_with_the_choices_named():
    P, y, studies, parts = _members_data()
    with pytest.raises(ValueError, match="combine must be one of"):
        fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], combine="median")
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], calibration="beta")
    with pytest.raises(ValueError, match="shape"):
        fit_ensemble_parameters(P[:, :1], y, studies, parts, ["a", "b"])
    with pytest.raises(ValueError, match="both normal and abnormal"):
        fit_ensemble_parameters(P, np.zeros_like(y), studies, parts, ["a", "b"])


@pytest.mark.parametrize("combine", ["mean", "weighted_mean", "vote", "stacking"])
def test_every_combination_fits_and_gives_probabilities(combine):
    P, y, studies, parts = _members_data()
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["strong", "weak"], combine=combine, calibration="platt")
    prob = fitted(P)
    assert prob.shape == (len(y),)
    assert np.all((prob >= 0) & (prob <= 1))
    assert _study_auc(prob, y, studies) > 0.8  # the strong member carries it


def test_stacking_and_auto_weights_favour_the_stronger_member():
    P, y, studies, parts = _members_data()
    stacked = fit_ensemble_parameters(P, y, studies, parts, ["strong", "weak"], combine="stacking")
    spread = np.log(P / (1 - P)).std(axis=0)  # compare contributions, not raw coefficients
    contribution = np.abs(stacked.stacking["coef"]) * spread
    assert contribution[0] > 2 * contribution[1]
    weighted = fit_ensemble_parameters(P, y, studies, parts, ["strong", "weak"], combine="weighted_mean")
    assert weighted.weights[0] > weighted.weights[1]
    mean = fit_ensemble_parameters(P, y, studies, parts, ["strong", "weak"], combine="mean")
    assert _study_auc(stacked(P), y, studies) >= _study_auc(mean(P), y, studies) - 0.01


def test_vote_is_the_share_of_members_calling_abnormal():
    P, y, studies, parts = _members_data()
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], combine="vote", calibration="none")
    votes = fitted.combined_scores(P)
    assert set(np.round(votes, 6)) <= {0.0, 0.5, 1.0}
    manual = (P > np.array(fitted.member_thresholds)).mean(axis=1)
    np.testing.assert_allclose(votes, manual)


def test_thresholds_per_body_part_and_fallback_to_all_studies():
    P, y, studies, parts = _members_data(n_studies=150)
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], min_studies_per_class=5)
    assert set(fitted.thresholds) == {"ALL", *PARTS}
    t, source = fitted.threshold("XR_WRIST", "youden")
    assert source == "XR_WRIST" and t == fitted.thresholds["XR_WRIST"]["youden"]
    t, source = fitted.threshold("XR_SHOULDER", "high_sensitivity")
    assert source == "ALL" and t == fitted.thresholds["ALL"]["high_sensitivity"]
    strict = fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], min_studies_per_class=1000)
    assert set(strict.thresholds) == {"ALL"}
    with pytest.raises(ValueError, match="operating_point"):
        fitted.threshold("XR_WRIST", "best")


def test_operating_points_reach_their_targets():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.35 + rng.random(300) * 0.65, 0, 1)
    ops = operating_points(y, p, target_sensitivity=0.9, target_specificity=0.9)
    sens, _ = sensitivity_specificity(y, p, ops["high_sensitivity"])
    _, spec = sensitivity_specificity(y, p, ops["high_specificity"])
    assert sens >= 0.9 and spec >= 0.9
    assert ops["high_sensitivity"] < ops["youden"] < ops["high_specificity"]
    with pytest.raises(ValueError, match="both normal and abnormal"):
        operating_points([1, 1], [0.2, 0.8])


def test_fitted_ensemble_round_trips_through_json(tmp_path):
    P, y, studies, parts = _members_data()
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], combine="stacking", calibration="isotonic")
    path = fitted.save(tmp_path / "models" / "ensemble.json")
    loaded = FittedEnsemble.load(path)
    np.testing.assert_allclose(loaded(P), fitted(P))
    assert loaded.thresholds == fitted.thresholds
    with pytest.raises(FileNotFoundError, match="fit-ensemble"):
        FittedEnsemble.load(tmp_path / "absent.json")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        loaded(P[:, :1])


def test_cross_fitted_probabilities_are_out_of_fold():
    """In-sample isotonic stacking overfits noise; out-of-fold it cannot score above chance."""
    rng = np.random.default_rng(4)
    n = 200
    P = rng.random((n, 3))
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    studies = [f"s{i // 2}" for i in range(n)]
    parts = ["XR_WRIST"] * n
    kwargs = {"combine": "stacking", "calibration": "isotonic"}
    in_sample = fit_ensemble_parameters(P, y, studies, parts, ["a", "b", "c"], **kwargs)(P)
    oof = cross_fitted_probabilities(P, y, studies, parts, ["a", "b", "c"], n_folds=5, **kwargs)
    assert not np.isnan(oof).any()
    assert _study_auc(in_sample, y, studies) > _study_auc(oof, y, studies) + 0.05
    with pytest.raises(ValueError, match="at least 2 normal and 2 abnormal"):
        cross_fitted_probabilities(P[:4], [0, 0, 1, 1], studies[:4], parts[:4], ["a", "b", "c"])


def test_uncertainty_from_disagreement_and_closeness():
    calm = study_uncertainty([0.9, 0.88], probability=0.89, threshold=0.4)
    assert calm["uncertainty"] == pytest.approx(0.02)
    split = study_uncertainty([0.95, 0.15], probability=0.55, threshold=0.1)
    assert split["disagreement"] == pytest.approx(0.8) and split["uncertainty"] == pytest.approx(0.8)
    edge = study_uncertainty([0.41, 0.41], probability=0.41, threshold=0.4)
    assert edge["closeness"] == pytest.approx(1 - 0.01 / 0.15) and edge["uncertainty"] > 0.9
    assert study_uncertainty([0.7], 0.7, 0.3)["disagreement"] == 0.0


def test_an_ensemble_fitted_on_other_members_is_used_with_them(synth_root, tmp_path, capsys):
    """fit-ensemble --members records its members in ensemble.json; evaluate, infer and the
    listener then load those members, not the config's (whose densenet has no checkpoint here)."""
    from mura_monai.cli import main
    from mura_monai.ensemble_predictor import EnsemblePredictor
    from mura_monai.model_settings import save_model_settings
    from tests.ensemble_support import ENSEMBLE, random_member

    members, models = tmp_path / "members", tmp_path / "models"
    random_member("resnet50", members / "resnet50", seed=0)
    save_model_settings(members / "resnet50", image_size=32)
    common = ["--bundle", str(ENSEMBLE), "--dataset-dir", str(synth_root), "--members-models-dir", str(members),
              "--models-dir", str(models), "--device", "cpu"]
    assert main(["fit-ensemble", *common, "--members", "resnet50"]) == 0
    assert json.loads((models / "ensemble.json").read_text())["members"] == ["resnet50"]
    predictor = EnsemblePredictor(ENSEMBLE, device="cpu", models_dir=models, members_models_dir=members)
    assert predictor.member_names == ["resnet50"]
    assert main(["fit-ensemble", *common, "--members", "resnet50,alexnet"]) == 2
    assert "'alexnet' is not a bundle" in capsys.readouterr().err
