"""bundles/ensemble end to end through the CLI: fit, infer with heatmaps and DICOM outputs, evaluate.

Members are the real densenet169_wbce and resnet50 bundles with random weights
(tests/ensemble_support.py); the fit, the outputs and the evaluation are real.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pydicom
import pytest
import torch

from mura_monai.cli import main
from mura_monai.model_settings import save_model_settings
from tests.dicom_out.dciodvfy import dciodvfy_errors
from tests.ensemble_support import ENSEMBLE, REPO, fitted_ensemble


@pytest.fixture(scope="module")
def fitted(synth_root, tmp_path_factory):
    """Members' checkpoints and an ensemble fitted on the synthetic valid split."""
    return fitted_ensemble(synth_root, tmp_path_factory.mktemp("ensemble"))


def _common(fitted) -> list[str]:
    return ["--bundle", str(ENSEMBLE), "--members-models-dir", str(fitted["members"]),
            "--models-dir", str(fitted["models"]), "--device", "cpu"]


def test_fit_writes_ensemble_json_with_operating_points(fitted):
    doc = json.loads((fitted["models"] / "ensemble.json").read_text())
    assert doc["members"] == ["densenet169_wbce", "resnet50"]
    selection = doc["selection"]  # the bundle's default combine is auto: the choice and why are recorded
    assert selection["requested"] == "auto" and selection["chosen"] in {c["name"] for c in selection["candidates"]}
    assert {"densenet169_wbce", "resnet50"} <= {c["name"] for c in selection["candidates"]}
    chosen = next(c for c in selection["candidates"] if c["name"] == selection["chosen"])
    assert doc["active_members"] == chosen["members"] and doc["combine"] == chosen["combine"]
    assert doc["calibration"] == chosen["calibration"]
    assert doc["fit_summary"]["settings"]["combine"] == chosen["combine"]  # what cross-fitting repeats
    assert set(doc["thresholds"]["ALL"]) == {"pr_equal", "youden", "high_sensitivity", "high_specificity"}
    assert all(0.0 <= t <= 1.0 for t in doc["thresholds"]["ALL"].values())
    assert doc["fit_summary"]["n_studies"] > 0
    assert set(doc["fit_summary"]["member_study_auc"]) == {"densenet169_wbce", "resnet50"}


def test_infer_dicom_study_writes_json_heatmaps_sr_and_sc(fitted, tmp_path):
    study_dir = next(p.parent for p in sorted((fitted["root"].parent / "dicom" / "valid").rglob("*.dcm")))
    out = tmp_path / "infer.json"
    rc = main(["infer", *_common(fitted), str(study_dir), "--output", str(out),
               "--heatmaps", str(tmp_path / "heat"), "--dicom-out", str(tmp_path / "dicom")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["bundle"] == "ensemble" and [m["name"] for m in doc["ensemble"]["members"]] == ["densenet169_wbce", "resnet50"]
    (study,) = doc["studies"]
    sources = [pydicom.dcmread(p) for p in sorted(study_dir.glob("*.dcm"))]
    assert study["study"] == sources[0].StudyInstanceUID
    assert study["body_part_source"] == "dicom" and study["body_part"].startswith("XR_")
    assert study["abnormal"] == (study["probability"] > study["threshold"])
    assert study["operating_point"] == "youden"
    assert 0.0 <= study["uncertainty"] <= 1.0 and isinstance(study["uncertain"], bool)
    assert set(study["members"]) == {"densenet169_wbce", "resnet50"}
    assert {i["sop_instance_uid"] for i in study["images"]} == {s.SOPInstanceUID for s in sources}
    for image, source in zip(sorted(study["images"], key=lambda i: i["path"]), sources):
        heat = cv2.imread(image["heatmap"])
        assert heat.shape[:2] == (source.Rows, source.Columns)  # resampled to the original radiograph
    written = [Path(p) for p in study["dicom_outputs"]]
    assert len(written) == len(sources) + 1
    for path in written:
        assert dciodvfy_errors(path) == [], path
    sr = pydicom.dcmread(next(p for p in written if p.name == "sr.dcm"))
    assert sr.StudyInstanceUID == study["study"] and sr.Modality == "SR"


def test_infer_png_study_takes_body_part_from_path_and_skips_dicom(fitted, tmp_path):
    study_dir = next(p.parent for p in sorted((fitted["root"] / "MURA-v1.1" / "valid").rglob("*.png")))
    out = tmp_path / "infer.json"
    assert main(["infer", *_common(fitted), str(study_dir), "--output", str(out), "--dicom-out", str(tmp_path / "d")]) == 0
    (study,) = json.loads(out.read_text())["studies"]
    assert study["body_part"] == study_dir.parts[-3] and study["body_part_source"] == "path"
    assert study["dicom_outputs"] == []


def test_unknown_body_part_is_reported_not_guessed(fitted, tmp_path):
    source = sorted((fitted["root"].parent / "dicom" / "valid").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(source)
    for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription"):
        if keyword in ds:
            delattr(ds, keyword)
    (tmp_path / "anon").mkdir()
    ds.save_as(tmp_path / "anon" / "image.dcm")
    out = tmp_path / "infer.json"
    assert main(["infer", *_common(fitted), str(tmp_path / "anon"), "--output", str(out)]) == 0
    (study,) = json.loads(out.read_text())["studies"]
    assert study["body_part"] == "UNKNOWN" and study["body_part_source"] == "unknown"
    assert study["threshold_fitted_on"] == "ALL"


def test_evaluate_reports_members_and_the_ensemble(fitted, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", *_common(fitted), "--dataset-dir", str(fitted["root"]), "--output-dir", str(out),
                 "--n-bootstrap", "20"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bundle"] == "ensemble"
    selection = metrics["ensemble"]["selection"]
    # the choice is cross-fitted on the selection's folds: evaluate reports the AUC recorded for it,
    # never below a member's own
    assert metrics["cross_fitted"] is True
    assert metrics["study"]["auc"] == pytest.approx(selection["chosen_oof_study_auc"], abs=1e-9)
    assert metrics["study"]["auc"] >= max(block["study"]["auc"] for block in metrics["members"].values()) - 1e-9
    assert metrics["ensemble"]["chosen"] == selection["chosen"]
    assert set(metrics["members"]) == {"densenet169_wbce", "resnet50"}
    assert metrics["members"]["resnet50"]["n_studies"] == metrics["n_studies"]
    assert metrics["study"]["threshold"] == pytest.approx(metrics["thresholds"]["ALL"]["youden"])
    page = (out / "report.html").read_text()
    assert "Ensemble and members" in page and 'id="ensemble-resnet50"' in page
    assert "How the combination was chosen" in page and 'id="selection-resnet50"' in page
    samples = sorted((out / "heatmaps").glob("sample_*.png"))
    assert 1 <= len(samples) <= 4
    assert page.count("data:image/png;base64,") == 3 + len(samples)  # ROC, PR, calibration + heatmaps


def test_real_cr_radiographs_from_pydicom_data_get_heatmaps_sr_and_sc(fitted, tmp_path):
    """pydicom-data's CR images: MONOCHROME1, uncompressed and JPEG 2000, no pixel spacing."""
    data_store = pytest.importorskip("data_store")
    data = Path(data_store.__file__).parent / "data"
    (tmp_path / "in").mkdir()
    for name in ("RG1_UNCR.dcm", "RG3_J2KR.dcm"):
        shutil.copy(data / name, tmp_path / "in" / name)
    out = tmp_path / "infer.json"
    assert main(["infer", *_common(fitted), str(tmp_path / "in"), "--output", str(out),
                 "--heatmaps", str(tmp_path / "heat"), "--dicom-out", str(tmp_path / "dicom")]) == 0
    studies = json.loads(out.read_text())["studies"]
    assert len(studies) == 2
    for study in studies:
        (image,) = study["images"]
        source = pydicom.dcmread(image["path"])
        assert cv2.imread(image["heatmap"]).shape[:2] == (source.Rows, source.Columns)
        assert len(study["dicom_outputs"]) == 2
        for path in study["dicom_outputs"]:
            assert dciodvfy_errors(Path(path)) == [], path


def test_stacking_is_evaluated_out_of_fold_on_its_own_fit_split(fitted, tmp_path):
    models = tmp_path / "stacking"
    common = ["--bundle", str(ENSEMBLE), "--members-models-dir", str(fitted["members"]), "--models-dir", str(models),
              "--device", "cpu"]
    assert main(["fit-ensemble", *common, "--dataset-dir", str(fitted["root"]), "--combine", "stacking"]) == 0
    assert json.loads((models / "ensemble.json").read_text())["stacking"]["coef"]
    out = tmp_path / "eval"
    assert main(["evaluate", *common, "--dataset-dir", str(fitted["root"]), "--output-dir", str(out),
                 "--n-bootstrap", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cross_fitted"] is True and metrics["ensemble"]["combine"] == "stacking"
    fitted_settings = json.loads((models / "ensemble.json").read_text())["fit_summary"]["settings"]
    assert fitted_settings["combine"] == "stacking"  # what the cross-fit repeats, not the config's mean


def test_missing_member_checkpoint_and_unfitted_ensemble_name_the_path(fitted, tmp_path, capsys):
    shutil.copytree(fitted["members"] / "densenet169_wbce", tmp_path / "members" / "densenet169_wbce")
    rc = main(["infer", "--bundle", str(ENSEMBLE), "--members-models-dir", str(tmp_path / "members"),
               "--models-dir", str(fitted["models"]), "--device", "cpu", str(fitted["root"])])
    assert rc == 2
    assert str(tmp_path / "members" / "resnet50" / "model.pt") in capsys.readouterr().err
    rc = main(["infer", "--bundle", str(ENSEMBLE), "--members-models-dir", str(fitted["members"]),
               "--models-dir", str(tmp_path / "nowhere"), "--device", "cpu", str(fitted["root"])])
    assert rc == 2
    err = capsys.readouterr().err
    assert "fit-ensemble" in err and str(tmp_path / "nowhere" / "ensemble.json") in err


def test_router_names_the_body_part_when_dicom_and_path_do_not(fitted, tmp_path):
    """The efficientnet_b0_router bundle's router (random weights here) fills in unknown parts."""
    from mura_monai.constants import BODY_PARTS
    from mura_monai.ensemble_predictor import EnsemblePredictor
    from mura_monai.routing import MANIFEST_FILE, build_routed_classifier

    router_dir = tmp_path / "router"
    router_dir.mkdir()
    (router_dir / MANIFEST_FILE).write_text(json.dumps({"router": "router", "parts": ["XR_WRIST"]}))
    torch.manual_seed(0)
    torch.save(build_routed_classifier(router_dir).state_dict(), router_dir / "model.pt")
    save_model_settings(router_dir, image_size=64)
    source = sorted((fitted["root"].parent / "dicom" / "valid").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(source)
    for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(tmp_path / "image.dcm")
    router = {"bundle": str(REPO / "bundles" / "efficientnet_b0_router"), "models_dir": str(router_dir)}
    predictor = EnsemblePredictor(ENSEMBLE, device="cpu", models_dir=fitted["models"],
                                  members_models_dir=fitted["members"], overrides={"router": router})
    (study,) = predictor.predict([tmp_path / "image.dcm"])["studies"]
    assert study["body_part_source"] == "router" and study["body_part"] in BODY_PARTS


def test_infer_refuses_an_unknown_heatmap_studies_before_scoring(fitted, tmp_path, capsys, monkeypatch):
    from mura_monai.ensemble_predictor import EnsemblePredictor

    scored = []
    score = EnsemblePredictor.member_probabilities
    monkeypatch.setattr(EnsemblePredictor, "member_probabilities",
                        lambda self, paths, **kwargs: scored.append(paths) or score(self, paths, **kwargs))
    bundle = tmp_path / "bundle"
    shutil.copytree(ENSEMBLE / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["heatmap_studies"] == "all"  # the bundle's default: today's behaviour
    config.update(heatmap_studies="abnormals", bundles_dir=str(REPO / "bundles"))
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    study_dir = next(p.parent for p in sorted((fitted["root"].parent / "dicom" / "valid").rglob("*.dcm")))
    rc = main(["infer", "--bundle", str(bundle), "--members-models-dir", str(fitted["members"]),
               "--models-dir", str(fitted["models"]), "--device", "cpu", str(study_dir),
               "--dicom-out", str(tmp_path / "dicom"), "--output", str(tmp_path / "infer.json")])
    assert rc == 2
    assert "heatmap_studies must be one of all, abnormal, uncertain, none; got 'abnormals'" in capsys.readouterr().err
    assert scored == [] and not (tmp_path / "infer.json").exists() and not (tmp_path / "dicom").exists()
