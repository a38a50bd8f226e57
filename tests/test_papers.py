"""The papers' claims: paired differences, verdicts, the per-paper tables, and the benchmark's plan."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mura_monai.benchmark import BENCHMARK_BUNDLES, BUNDLES_DIR, Budget, training_overrides
from mura_monai.cli import BENCHMARK_BUNDLE_NAMES, main
from mura_monai.constants import BODY_PARTS
from mura_monai.engines.prediction_buffer import write_evaluation
from mura_monai.metrics import bootstrap_intervals, paired_bootstrap
from mura_monai.papers import (
    CLAIMS,
    ENTRIES,
    MIN_GAIN,
    MIN_STUDIES_PER_CLASS,
    PAPERS,
    evaluate_claims,
    study_scores,
    verdict,
    write_papers_report,
)


def _study_set(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(int)
    hard = rng.normal(0, 1, n)  # what both methods get wrong together
    return rng, labels, hard


# ---------------------------------------------------------------- paired bootstrap


def test_paired_differences_of_identical_predictions_are_exactly_zero():
    rng, y, hard = _study_set()
    p = 1 / (1 + np.exp(-(y * 1.5 + hard)))
    out = paired_bootstrap(y, p, p, 0.5, 0.5, n_bootstrap=300)
    for metric in ("auc", "kappa"):
        assert out[metric]["difference"] == 0.0
        assert out[metric]["ci95"] == [0.0, 0.0]
        assert out[metric]["share_not_better"] == 1.0


def test_pairing_narrows_the_interval_of_a_small_gain_that_separate_intervals_hide():
    """Two methods sharing the same hard studies: their separate intervals overlap, the paired
    interval of their difference lies above zero."""
    rng, y, hard = _study_set(200, seed=1)
    base = y * 1.0 + hard
    better = base + y * 0.35  # the same errors, a little more separation
    p_base, p_better = 1 / (1 + np.exp(-base)), 1 / (1 + np.exp(-better))
    separate_base = bootstrap_intervals(y, p_base, n_bootstrap=500)["auc"]
    separate_better = bootstrap_intervals(y, p_better, n_bootstrap=500)["auc"]
    assert separate_better[0] < separate_base[1], "the separate intervals overlap"
    paired = paired_bootstrap(y, p_better, p_base, n_bootstrap=500)
    assert paired["auc"]["difference"] > 0
    assert paired["auc"]["ci95"][0] > 0
    assert paired["auc"]["ci95"][1] - paired["auc"]["ci95"][0] < (separate_base[1] - separate_base[0]) / 2
    assert verdict(paired["auc"]["ci95"], (100, 100)) == "reproduced"


def test_paired_bootstrap_is_reproducible_and_checks_its_inputs():
    rng, y, hard = _study_set()
    a, b = rng.random(len(y)), rng.random(len(y))
    assert paired_bootstrap(y, a, b, seed=4) == paired_bootstrap(y, a, b, seed=4)
    assert paired_bootstrap(y, a, b, seed=4)["auc"]["ci95"] != paired_bootstrap(y, a, b, seed=5)["auc"]["ci95"]
    swapped = paired_bootstrap(y, b, a, seed=4)["auc"]
    assert swapped["difference"] == pytest.approx(-paired_bootstrap(y, a, b, seed=4)["auc"]["difference"])
    with pytest.raises(ValueError, match="same units"):
        paired_bootstrap(y, a[:-1], b)
    assert np.isnan(paired_bootstrap(y, a, b, n_bootstrap=0)["auc"]["ci95"][0])


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize(("ci", "n", "expected"), [
    ((0.02, 0.10), (50, 50), "reproduced"),
    ((-0.10, -0.01), (50, 50), "not reproduced"),
    ((-0.10, MIN_GAIN / 2), (50, 50), "not reproduced"),
    ((-0.05, 0.08), (50, 50), "inconclusive at this size"),
    ((0.0, 0.08), (50, 50), "inconclusive at this size"),
    ((0.02, 0.10), (MIN_STUDIES_PER_CLASS - 1, 50), "inconclusive at this size"),
    ((float("nan"), float("nan")), (50, 50), "inconclusive at this size"),
])
def test_verdict_rule(ci, n, expected):
    assert verdict(ci, n) == expected


# ---------------------------------------------------------------- a run folder's tables


def _records(quality: float, n_studies: int = 60, seed: int = 0, zoom_gain: float | None = None) -> list[dict]:
    """Image predictions on one fixed set of studies: shared study difficulty, method quality."""
    hard_rng = np.random.default_rng(99)  # the same hard studies for every method
    difficulty = hard_rng.normal(0, 1, n_studies)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_studies):
        label = int(i % 2)
        for view in range(1 + i % 3):
            logit = quality * (2 * label - 1) + difficulty[i] + rng.normal(0, 0.8)
            record = {"study": f"valid/XR_PART/patient{i:05d}/study1", "label": label, "path": f"s{i}/image{view + 1}.png",
                      "body_part": BODY_PARTS[i % len(BODY_PARTS)], "probability": float(1 / (1 + np.exp(-logit)))}
            if zoom_gain is not None:
                record["probability_first"] = record["probability"]
                zoomed = logit + zoom_gain * (2 * label - 1)
                record["probability"] = float(1 / (1 + np.exp(-zoomed)))
            records.append(record)
    return records


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A benchmark run folder as the benchmark leaves it, with evaluations of known quality."""
    qualities = {"densenet169_wbce": 1.0, "resnet50": 0.6, "fusionnet_agcnn": 0.3, "siamese_triplet": 1.0,
                 "vgg19": 0.8, "resnet_svm": 0.2, "efficientnet_b0_router": 0.9}
    for seed, (name, quality) in enumerate(qualities.items()):
        write_evaluation(_records(quality, seed=seed), tmp_path / "eval" / name, extra={
            "bundle": name, "training": {"train_time_s": 60.0 * (seed + 1), "n_parameters": 1_000_000 * (seed + 1)}})
    write_evaluation(_records(0.8, seed=3, zoom_gain=1.5), tmp_path / "eval" / "vgg19_zoom", extra={"bundle": "vgg19"})
    write_evaluation(_records(1.0, seed=0), tmp_path / "eval" / "ensemble", extra={
        "bundle": "ensemble", "members": {"densenet169_wbce": {"study": {"auc": 0.8}}, "resnet50": {"study": {"auc": 0.7}},
                                          "fusionnet_agcnn": {"study": {"auc": 0.6}}}})
    return tmp_path


def test_every_claim_is_answered_with_a_paired_difference_and_a_verdict(run_dir):
    claims = evaluate_claims(run_dir, n_bootstrap=200)
    assert [(c["method"], c["baseline"]) for c in claims] == [
        (c.method, "densenet169_wbce" if c.baseline == "best member" else c.baseline) for c in CLAIMS]
    by_method = {(c["method"], c["baseline"]): c for c in claims}
    # the ensemble's predictions here are its best member's: no difference at all
    same = by_method[("ensemble", "densenet169_wbce")]
    assert same["auc"]["difference"] == 0.0 and same["verdict"] == "not reproduced"
    # a zoom that separates every study more than the first look: reproduced
    assert by_method[("vgg19 + zoom", "vgg19, first look")]["verdict"] == "reproduced"
    # a much weaker method: the interval lies below zero
    weak = by_method[("fusionnet_agcnn", "densenet169_wbce")]
    assert weak["auc"]["ci95"][1] < 0 and weak["verdict"] == "not reproduced"
    assert all(c["paper"] in PAPERS.values() and c["n_studies"] == 60 for c in claims)


def test_derived_readings_score_the_same_studies(run_dir):
    plain, _ = study_scores(run_dir, ENTRIES["densenet169_wbce"])
    one_view, _ = study_scores(run_dir, ENTRIES["densenet169_wbce, one view"])
    first_look, _ = study_scores(run_dir, ENTRIES["vgg19, first look"])
    assert set(plain) == set(one_view) == set(first_look)
    predictions = json.loads((run_dir / "eval" / "densenet169_wbce" / "predictions.json").read_text())
    first_images = {}
    for image in sorted(predictions["images"], key=lambda r: r["path"]):
        first_images.setdefault(image["study"], image["probability"])
    assert {s: p for s, (_, p) in one_view.items()} == first_images
    multi = [s for s in plain if sum(r["study"] == s for r in predictions["images"]) > 1]
    assert any(plain[s][1] != one_view[s][1] for s in multi)


def test_papers_report_has_the_leaderboard_the_claims_and_each_papers_table(run_dir):
    settings = {"dataset_dir": "/data/MURA", "budget": {"epochs": 4, "image_size": 96}}
    report = write_papers_report(run_dir, settings, n_bootstrap=100)
    text = (run_dir / "papers.md").read_text()
    for paper in PAPERS.values():
        assert f"## {paper}" in text
    aucs = [row["study"]["auc"] for row in report["leaderboard"]]
    assert aucs == sorted(aucs, reverse=True)
    assert {row["method"] for row in report["leaderboard"]} == {
        "densenet169_wbce", "resnet50", "fusionnet_agcnn", "siamese_triplet", "vgg19", "resnet_svm",
        "efficientnet_b0_router", "ensemble", "vgg19 + zoom"}
    assert [row["difference"] is None for row in report["leaderboard"]].count(True) == 1  # the baseline
    assert "| Average |" in text and "| Overall |" in text and "error rate" in text and "| Body part |" in text
    assert "epochs 4, image_size 96" in text
    lines = (run_dir / "leaderboard.csv").read_text().splitlines()
    assert len(lines) == 1 + len(report["leaderboard"]) and lines[0].startswith("rank,method")
    saved = json.loads((run_dir / "claims.json").read_text())
    assert [c["verdict"] for c in saved["claims"]] == [c["verdict"] for c in report["claims"]]


def test_a_claim_on_different_studies_is_refused(run_dir):
    folder = run_dir / "eval" / "resnet50"
    write_evaluation(_records(0.6, n_studies=40), folder)
    with pytest.raises(ValueError, match="different studies"):
        evaluate_claims(run_dir, n_bootstrap=10)


def test_an_empty_run_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no evaluations"):
        write_papers_report(tmp_path, {})


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("bundle", BENCHMARK_BUNDLES)
def test_every_training_override_is_one_the_bundle_reads_and_accepts(bundle, tmp_path):
    config = json.loads((BUNDLES_DIR / bundle / "configs" / "train.json").read_text())
    values = training_overrides(bundle, Budget(), tmp_path / "mura", tmp_path / "run")
    assert set(values) <= set(config), "MONAI would add an unread key silently"
    assert not set(values) & set(config.get("unsupported_overrides") or {})
    assert values["ckpt_dir"] == str(tmp_path / "run" / "models" / bundle)
    if bundle == "resnet_svm":
        assert values["backbone_ckpt"] == str(tmp_path / "run" / "models" / "resnet50" / "model.pt")
        assert "max_epochs" not in values
    else:
        assert values["max_epochs"] == 4 and values["rotate_range"] == 0


def test_pretrained_weights_reach_every_bundle_that_reads_them(tmp_path):
    for bundle in BENCHMARK_BUNDLES:
        values = training_overrides(bundle, Budget(pretrained_path="imagenet"), tmp_path / "mura", tmp_path / "run")
        assert values["pretrained_path"] == "imagenet", bundle
    assert "pretrained_path" not in training_overrides("resnet50", Budget(), tmp_path / "mura", tmp_path / "run")


def test_the_command_line_knows_the_same_bundles():
    assert BENCHMARK_BUNDLE_NAMES == BENCHMARK_BUNDLES


def test_bad_benchmark_arguments_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--dataset-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--bundles", "alexnet"])
    assert "unknown bundle alexnet" in capsys.readouterr().err
    assert main(["benchmark", "--dataset-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert main(["benchmark", "--dataset-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_early_stop_patience_zero_means_the_whole_budget():
    """The override checker documents 0 as "never stop early"; Ignite refuses a patience of 0."""
    from monai.bundle import ConfigParser

    for bundle in ("densenet169_wbce", "resnet50", "vgg19", "siamese_triplet", "efficientnet_b0_router"):
        parser = ConfigParser()
        parser.read_config(str(BUNDLES_DIR / bundle / "configs" / "train.json"))
        parser.update({"early_stop_patience": 0, "max_epochs": 6})
        assert parser.get_parsed_content("early_stopper#patience") == 7, bundle
        parser.update({"early_stop_patience": 2})
        assert parser.get_parsed_content("early_stopper#patience") == 2, bundle
