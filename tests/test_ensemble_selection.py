"""``combine="auto"``: the ensemble never ships worse than its best member on the split it is fitted on.

Synthetic member probabilities only (numpy, no networks): studies of several images each, body
parts, and patients with more than one study, named like MURA's study folders.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mura_monai.ensemble import (
    SELECTION_RULE,
    FittedEnsemble,
    evaluation_probabilities,
    fit_ensemble_parameters,
    patients_of_studies,
    select_combination,
)
from mura_monai.ensemble_outputs import cam_weights
from mura_monai.ensemble_predictor import EnsemblePredictor
from mura_monai.results import ImageSource

PARTS = ["XR_WRIST", "XR_HAND", "XR_ELBOW", "XR_SHOULDER"]


def _studies(n_patients=90, seed=0, skills=(0.5, 0.05), shared_noise=True):
    """Image probabilities of members of given skill (logit separation of the classes) on
    patients with one or two studies of one to four images each.

    ``shared_noise``: each study has a look that fools every member alike (a hard study), as
    real networks share their mistakes; members then differ by their own per-image noise.
    """
    rng = np.random.default_rng(seed)
    P, labels, studies, parts = [], [], [], []
    for patient in range(n_patients):
        for k in range(1 + int(rng.random() < 0.4)):
            part = PARTS[int(rng.integers(len(PARTS)))]
            label = int(rng.random() < 0.45)
            hard = rng.normal(0, 1.0) if shared_noise else 0.0
            for _ in range(int(rng.integers(1, 5))):
                logits = [skill * (2 * label - 1) + hard * (skill > 0.3) + rng.normal(0, 1.0) for skill in skills]
                P.append(1 / (1 + np.exp(-np.array(logits))))
                labels.append(label)
                studies.append(f"MURA-v1.1/valid/{part}/patient{patient:05d}/study{k + 1}_{'positive' if label else 'negative'}")
                parts.append(part)
    return np.array(P), np.array(labels), studies, parts


def _study_auc(prob, labels, studies):
    """As `mura-monai evaluate` computes it: mean over each study's images, then AUC."""
    by: dict[str, tuple[list, int]] = {}
    for p, y, s in zip(prob, labels, studies):
        by.setdefault(s, ([], int(y)))[0].append(float(p))
    return roc_auc_score([y for _, y in by.values()], [np.mean(p) for p, _ in by.values()])


def _evaluated(fitted, P, y, studies, parts):
    """The ensemble's study AUC and each member's raw one, as `mura-monai evaluate` reports them
    on the split the ensemble was fitted on."""
    prob, cross_fitted = evaluation_probabilities(fitted, P, y, studies, parts, fitted_on_these=True)
    members = {name: _study_auc(P[:, j], y, studies) for j, name in enumerate(fitted.members)}
    return _study_auc(prob, y, studies), members, cross_fitted


def _candidate(fitted, name):
    return next(c for c in fitted.selection["candidates"] if c["name"] == name)


def test_patients_are_the_study_folders_parent():
    studies = ["MURA-v1.1/valid/XR_HAND/patient00007/study1_positive", "1.2.840.1"]
    assert patients_of_studies(studies) == ["patient00007", "1.2.840.1"]


def test_a_strong_and_a_near_chance_member_ship_the_strong_member_alone():
    """The demo's situation (0.726 alone, 0.692 averaged with a weak member): here 0.755 alone,
    0.704 for the mean, 0.753 weighted (a tie within the tolerance, which the simpler wins)."""
    P, y, studies, parts = _studies()
    members = ["densenet169_wbce", "resnet50"]
    fitted = fit_ensemble_parameters(P, y, studies, parts, members, combine="auto")
    selection = fitted.selection
    names = [c["name"] for c in selection["candidates"]]
    assert names == ["densenet169_wbce", "resnet50", "mean(densenet169_wbce+resnet50)",
                     "weighted_mean(densenet169_wbce+resnet50)", "stacking(densenet169_wbce+resnet50)"]
    strong = _study_auc(P[:, 0], y, studies)
    weak = _study_auc(P[:, 1], y, studies)
    assert strong > 0.7 and abs(weak - 0.5) < 0.1
    assert _candidate(fitted, "mean(densenet169_wbce+resnet50)")["oof_study_auc"] < strong  # the loss
    assert selection["chosen"] == "densenet169_wbce" and selection["best_member"] == "densenet169_wbce"
    assert fitted.active_members == ["densenet169_wbce"] and fitted.used_members == ["densenet169_wbce"]
    assert fitted.combine == "mean" and fitted.calibration == "none"
    # alone, it scores exactly as it does: the very same probabilities, nothing recalibrated
    assert _candidate(fitted, "densenet169_wbce")["oof_study_auc"] == strong
    np.testing.assert_array_equal(fitted(P), P[:, 0])
    ensemble, member_auc, cross_fitted = _evaluated(fitted, P, y, studies, parts)
    assert cross_fitted and ensemble == selection["chosen_oof_study_auc"] == member_auc["densenet169_wbce"] == strong
    assert ensemble >= max(member_auc.values())
    assert cam_weights(fitted) == [1.0, 0.0]  # the heatmap is the chosen member's


def test_complementary_members_ship_a_combination_that_beats_both():
    """Two members as good as each other with independent mistakes: their mean beats both."""
    P, y, studies, parts = _studies(seed=1, skills=(0.6, 0.6), shared_noise=False)
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], combine="auto")
    selection = fitted.selection
    singles = {c["name"]: c["oof_study_auc"] for c in selection["candidates"] if len(c["members"]) == 1}
    assert len(fitted.used_members) == 2 and fitted.combine in ("mean", "weighted_mean", "stacking")
    assert selection["chosen_oof_study_auc"] > max(singles.values()) + 0.02
    ensemble, member_auc, cross_fitted = _evaluated(fitted, P, y, studies, parts)
    assert cross_fitted and ensemble == pytest.approx(selection["chosen_oof_study_auc"], abs=1e-12)
    assert ensemble > max(member_auc.values())
    assert cam_weights(fitted)[0] > 0 and cam_weights(fitted)[1] > 0


@pytest.mark.parametrize("seed,skills", [(2, (0.9, 0.4)), (3, (0.5, 0.45, 0.1)), (4, (0.3, 0.8, 0.7))])
def test_evaluated_auc_is_the_recorded_one_and_never_below_the_best_member(seed, skills):
    """The guarantee where `evaluate` measures it: cross-fitted on the selection's folds, the
    ensemble scores the out-of-fold AUC recorded for its choice, which the rule keeps at or
    above each member alone (each member's own raw study AUC)."""
    P, y, studies, parts = _studies(n_patients=70, seed=seed, skills=skills)
    members = [f"m{j}" for j in range(len(skills))]
    fitted = fit_ensemble_parameters(P, y, studies, parts, members, combine="auto")
    ensemble, member_auc, _ = _evaluated(fitted, P, y, studies, parts)
    assert ensemble == pytest.approx(fitted.selection["chosen_oof_study_auc"], abs=1e-12)
    assert ensemble >= max(member_auc.values())
    for name, auc in member_auc.items():
        assert _candidate(fitted, name)["oof_study_auc"] == auc


def test_ties_within_the_tolerance_go_to_the_simpler_candidate():
    P, y, studies, parts = _studies(seed=1, skills=(0.6, 0.6), shared_noise=False)
    strict = select_combination(P, y, studies, parts, ["a", "b"], tolerance=0.0)
    best = max(strict["candidates"], key=lambda c: c["oof_study_auc"])
    assert strict["chosen"] == best["name"]
    loose = select_combination(P, y, studies, parts, ["a", "b"], tolerance=1.0)  # everything ties
    assert loose["chosen"] == strict["best_member"]  # fewest members first, then the higher AUC


def test_subsets_of_members_are_candidates_and_a_useless_member_can_be_left_out():
    P, y, studies, parts = _studies(n_patients=70, seed=5, skills=(0.7, 0.7, 0.0), shared_noise=False)
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b", "noise"], combine="auto")
    names = {c["name"] for c in fitted.selection["candidates"]}
    assert {"mean(a+b)", "mean(a+noise)", "mean(b+noise)", "vote(a+b+noise)", "stacking(a+b+noise)"} <= names
    assert "vote(a+b)" not in names  # two members' vote is only "both", "one" or "neither"
    assert len(names) == 3 + 3 * 3 + 4
    assert "noise" not in fitted.used_members
    weights = cam_weights(fitted)
    assert weights[2] == 0.0 and min(weights[:2]) > 0


def test_selection_round_trips_through_ensemble_json(tmp_path):
    P, y, studies, parts = _studies(seed=6, skills=(0.9, 0.5, 0.2))
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b", "c"], combine="auto", calibration="isotonic")
    path = fitted.save(tmp_path / "ensemble.json")
    doc = json.loads(path.read_text())
    assert doc["selection"]["rule"] == SELECTION_RULE and doc["selection"]["requested"] == "auto"
    assert doc["selection"]["folds"] == {"n_folds": 5, "seed": 0, "groups": "patient"}
    assert all({"name", "members", "combine", "calibration", "oof_study_auc"} <= set(c) for c in doc["selection"]["candidates"])
    assert doc["active_members"] == fitted.active_members
    assert doc["fit_summary"]["settings"]["combine"] == fitted.combine != "auto"  # what cross-fitting repeats
    loaded = FittedEnsemble.load(path)
    assert loaded.selection == fitted.selection and loaded.active_members == fitted.active_members
    np.testing.assert_array_equal(loaded(P), fitted(P))
    assert cam_weights(loaded) == cam_weights(fitted)
    assert evaluation_probabilities(loaded, P, y, studies, parts, True)[0].tolist() == \
        evaluation_probabilities(fitted, P, y, studies, parts, True)[0].tolist()


def test_an_ensemble_json_written_before_selection_loads_and_behaves_as_before(tmp_path):
    P, y, studies, parts = _studies(seed=7, skills=(0.9, 0.5))
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], combine="weighted_mean")
    doc = fitted.to_dict()
    for key in ("active_members", "selection"):
        del doc[key]
    del doc["fit_summary"]["settings"]["active_members"]
    (tmp_path / "ensemble.json").write_text(json.dumps(doc))
    old = FittedEnsemble.load(tmp_path / "ensemble.json")
    assert old.active_members is None and old.selection == {} and old.used_members == ["a", "b"]
    w = np.asarray(fitted.weights) / np.sum(fitted.weights)
    np.testing.assert_allclose(old(P), old.calibrator(P @ w))  # every member, weighted as before
    assert cam_weights(old) == fitted.weights
    prob, cross_fitted = evaluation_probabilities(old, P, y, studies, parts, True)
    assert cross_fitted and not np.isnan(prob).any()
    mean = FittedEnsemble.from_dict({**doc, "combine": "mean"})
    assert not mean.ranking_is_fitted and cam_weights(mean) == [1.0, 1.0]


def test_inference_uses_only_the_chosen_members(tmp_path):
    """Study results: the chosen member's probability, doubt from the chosen members only,
    every member still reported."""
    P, y, studies, parts = _studies()
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["strong", "weak"], combine="auto")
    assert fitted.used_members == ["strong"]
    predictor = EnsemblePredictor.__new__(EnsemblePredictor)
    predictor.fitted = fitted
    predictor.specs = [SimpleNamespace(name="strong"), SimpleNamespace(name="weak")]
    predictor.settings = {"operating_point": "youden", "uncertainty_margin": 0.15, "uncertain_level": 0.5}
    records = [ImageSource(path=f"{s}/{i}.png", study=s, body_part=p, body_part_source="path")
               for i, (s, p) in enumerate(zip(studies, parts))]
    results = predictor.studies(records, P)
    first = results[0]
    index = [i for i, s in enumerate(studies) if s == first.study]
    assert first.probability == pytest.approx(np.mean(P[index, 0]))
    assert set(first.members) == {"strong", "weak"} and first.disagreement == 0.0


def test_too_few_studies_to_compare_falls_back_to_the_mean_and_says_so():
    rng = np.random.default_rng(8)
    studies = [f"MURA-v1.1/valid/XR_HAND/patient{k:05d}/study1" for k in range(4) for _ in range(2)]
    y = np.repeat([1, 0, 0, 0], 2)  # one abnormal study: no fold could be scored on both classes
    P, parts = rng.random((8, 2)), ["XR_HAND"] * 8
    fitted = fit_ensemble_parameters(P, y, studies, parts, ["a", "b"], combine="auto")
    assert fitted.selection["candidates"] == [] and "no comparison" in fitted.selection["reason"]
    assert fitted.combine == "mean" and fitted.used_members == ["a", "b"] and fitted.calibration == "platt"
    assert not fitted.ranking_is_fitted  # evaluated as a plain mean always was: nothing to cross-fit
