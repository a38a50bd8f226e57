"""The densenet169_wbce bundle through MONAI's own bundle CLI, then mura-monai evaluate / infer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mura_monai.cli import main as cli_main

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "densenet169_wbce"
TINY = ["--image_size", "64", "--max_epochs", "1", "--batch_size", "8", "--num_workers", "0"]
METRIC_KEYS = {"auc", "kappa", "accuracy", "sensitivity", "specificity", "precision", "f1", "tp", "fp", "tn", "fn", "threshold"}


def _bundle_run(run_id: str, configs: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--meta_file", "configs/metadata.json",
           "--config_file", configs, *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("densenet")
    ckpt, out = work / "models", work / "train_out"
    _bundle_run("training", "configs/train.json", "--dataset_dir", str(synth_root), "--ckpt_dir", str(ckpt),
                "--output_dir", str(out), *TINY)
    return {"ckpt": ckpt, "work": work, "root": synth_root}


def test_training_keeps_best_checkpoint_settings_and_logs(trained):
    assert (trained["ckpt"] / "model.pt").stat().st_size > 1_000_000
    settings = json.loads((trained["ckpt"] / "model_settings.json").read_text())
    assert settings["image_size"] == 64 and settings["enhancement"] == "none"
    assert list((trained["work"] / "train_out").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_run_evaluating_writes_design_metrics(trained):
    out = trained["work"] / "eval_bundle_cli"
    _bundle_run("evaluating", "['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(trained["root"]),
                "--ckpt_dir", str(trained["ckpt"]), "--output_dir", str(out), "--n_bootstrap", "50", *TINY)
    doc = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(doc["study"]) and METRIC_KEYS <= set(doc["image"])
    assert doc["per_body_part"] and all(METRIC_KEYS <= set(b) for b in doc["per_body_part"].values())
    valid_studies = (trained["root"] / "MURA-v1.1" / "valid_labeled_studies.csv").read_text().strip().splitlines()
    assert doc["n_studies"] == len(valid_studies)
    assert doc["study"]["tp"] + doc["study"]["fp"] + doc["study"]["tn"] + doc["study"]["fn"] == doc["n_studies"]


def test_mura_monai_evaluate_uses_recorded_settings_and_writes_report(trained, capsys):
    out = trained["work"] / "eval_cli"
    code = cli_main(["evaluate", "--bundle", str(BUNDLE), "--models-dir", str(trained["ckpt"]), "--dataset-dir",
                     str(trained["root"]), "--output-dir", str(out), "--n-bootstrap", "20"])
    assert code == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["image_size"] == 64  # replayed from model_settings.json, not the config default 320
    assert "XR_" in (out / "report.html").read_text()
    assert "ALL studies" in capsys.readouterr().out


def test_infer_groups_dicom_by_study_instance_uid(trained, tmp_path):
    dicom_root = trained["root"].parent / "dicom"
    index = (dicom_root / "index.csv").read_text().splitlines()
    study_dir = sorted({Path(p).parent for p in dicom_root.rglob("*.dcm")})[0]
    out = tmp_path / "infer.json"
    assert cli_main(["infer", "--bundle", str(BUNDLE), "--models-dir", str(trained["ckpt"]), str(study_dir), "--output", str(out)]) == 0
    studies = json.loads(out.read_text())["studies"]
    assert len(studies) == 1 and len(index) > 1
    study = studies[0]
    assert study["study"].startswith("1.2.") or study["study"][0].isdigit()  # a UID, not a folder
    assert study["body_part"].startswith("XR_")
    assert len(study["images"]) == len(list(study_dir.glob("*.dcm")))
    assert 0.0 <= study["probability"] <= 1.0 and study["abnormal"] == (study["probability"] > study["threshold"])


def test_infer_reads_real_cr_radiographs(trained, tmp_path):
    data_store = pytest.importorskip("data_store")
    files = sorted((Path(data_store.__file__).parent / "data").glob("RG[13]_*.dcm"))
    assert any("J2K" in f.name for f in files)
    out = tmp_path / "cr.json"
    assert cli_main(["infer", "--bundle", str(BUNDLE), "--models-dir", str(trained["ckpt"]), *map(str, files), "--output", str(out)]) == 0
    images = [img for s in json.loads(out.read_text())["studies"] for img in s["images"]]
    assert sorted(img["path"] for img in images) == sorted(map(str, files))
    assert all(0.0 <= img["probability"] <= 1.0 for img in images)


def test_infer_names_a_missing_input(trained, tmp_path, capsys):
    missing = tmp_path / "no_such_study"
    assert cli_main(["infer", "--bundle", str(BUNDLE), "--models-dir", str(trained["ckpt"]), str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
