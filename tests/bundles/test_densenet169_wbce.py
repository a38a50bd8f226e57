"""The densenet169_wbce bundle through MONAI's own bundle CLI, then mura-monai evaluate / infer."""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from mura_monai.cli import main as cli_main
from mura_monai.networks import densenet169
from tests.bundles.bundle_runner import (
    BUNDLES,
    EVALUATE,
    MULTI_GPU,
    TRAIN,
    assert_design_metrics,
    assert_evaluation_reproduces_training,
    assert_exports_agree,
    bundle_run,
    export_copy,
    read_json,
    torchrun,
    valid_images,
)

BUNDLE = BUNDLES / "densenet169_wbce"
TINY = ["--image_size", "64", "--max_epochs", "1", "--batch_size", "8", "--num_workers", "0"]


def _bundle_run(run_id: str, configs: str, *overrides: str):
    return bundle_run(BUNDLE, run_id, configs, *overrides)


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("densenet")
    ckpt, out = work / "models", work / "train_out"
    _bundle_run("training", TRAIN, "--dataset_dir", str(synth_root), "--ckpt_dir", str(ckpt),
                "--output_dir", str(out), *TINY)
    return {"ckpt": ckpt, "work": work, "root": synth_root}


def test_training_keeps_best_checkpoint_settings_and_logs(trained):
    assert (trained["ckpt"] / "model.pt").stat().st_size > 1_000_000
    settings = json.loads((trained["ckpt"] / "model_settings.json").read_text())
    assert settings["image_size"] == 64 and settings["enhancement"] == "none"
    assert list((trained["work"] / "train_out").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_training_writes_summary_and_epoch_checkpoint(trained):
    summary = read_json(trained["ckpt"] / "training_summary.json")
    assert summary["epochs_completed"] == 1 and summary["iterations"] > 0 and summary["train_time_s"] > 0
    assert summary["best_metric_epoch"] == 1 and 0.0 <= summary["best_metric"] <= 1.0
    assert summary["bundle"] == "densenet169_wbce" and summary["image_size"] == 64
    assert (trained["ckpt"] / "checkpoint_epoch=1.pt").is_file()


def test_resume_continues_from_the_last_epoch(trained, tmp_path):
    ckpt = tmp_path / "models"
    shutil.copytree(trained["ckpt"], ckpt)
    first = read_json(ckpt / "training_summary.json")
    proc = _bundle_run("training", TRAIN, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
                       "--output_dir", str(tmp_path / "out"), *TINY, "--max_epochs", "2", "--resume", "true")
    assert "resuming from" in proc.stdout + proc.stderr
    second = read_json(ckpt / "training_summary.json")
    # one more epoch, not two: the trainer state came back from checkpoint_epoch=1.pt
    assert second["epochs_completed"] == 2 and second["iterations"] == 2 * first["iterations"]
    assert second["train_time_s"] > first["train_time_s"]
    assert second["best_metric"] >= first["best_metric"]
    assert (ckpt / "checkpoint_epoch=2.pt").is_file()


def test_fresh_training_drops_stale_epoch_checkpoints(trained, tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(trained["ckpt"] / "checkpoint_epoch=1.pt", ckpt / "checkpoint_epoch=7.pt")
    _bundle_run("training", TRAIN, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
                "--output_dir", str(tmp_path / "out"), *TINY, "--body_parts", "['XR_WRIST','XR_HAND']")
    assert sorted(p.name for p in ckpt.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]


def test_early_stopping_ends_training_when_validation_stops_improving(trained, tmp_path):
    ckpt = tmp_path / "models"
    # min_delta 1 makes every epoch after the first "no improvement": patience 1 stops after epoch 2
    _bundle_run("training", TRAIN, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
                "--output_dir", str(tmp_path / "out"), *TINY, "--max_epochs", "4", "--early_stop_patience", "1",
                "--early_stopper#min_delta", "1.0", "--body_parts", "['XR_WRIST','XR_HAND']")
    summary = read_json(ckpt / "training_summary.json")
    assert summary["max_epochs"] == 4 and summary["epochs_completed"] == 2


def test_ddp_on_two_cpu_processes_splits_the_epoch(trained, tmp_path):
    ckpt = tmp_path / "models"
    bundle_run(BUNDLE, "training", MULTI_GPU, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
               "--output_dir", str(tmp_path / "out"), *TINY, launcher=torchrun(2))
    single = read_json(trained["ckpt"] / "training_summary.json")
    ddp = read_json(ckpt / "training_summary.json")
    n_images = len((trained["root"] / "MURA-v1.1" / "train_image_paths.csv").read_text().split())
    assert single["iterations"] == -(-n_images // 8)
    # each of the 2 ranks ran its half of the images (partition padded to even), batch 8
    per_rank = math.ceil(n_images / 2)
    assert ddp["iterations"] == math.ceil(per_rank / 8)
    assert 0.0 <= ddp["best_metric"] <= 1.0
    state = torch.load(ckpt / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper leaked into the checkpoint"
    densenet169().load_state_dict(state)


def test_run_evaluating_writes_design_metrics(trained):
    out = trained["work"] / "eval_bundle_cli"
    _bundle_run("evaluating", EVALUATE, "--dataset_dir", str(trained["root"]),
                "--ckpt_dir", str(trained["ckpt"]), "--output_dir", str(out), "--n_bootstrap", "50", *TINY)
    doc = read_json(out / "metrics.json")
    assert_design_metrics(doc, trained["root"])
    assert_evaluation_reproduces_training(trained["ckpt"], doc)
    assert doc["bundle"] == "densenet169_wbce"
    summary = read_json(trained["ckpt"] / "training_summary.json")
    assert doc["training"]["train_time_s"] == summary["train_time_s"] > 0
    assert doc["training"]["n_parameters"] > 10_000_000 and doc["training"]["checkpoint_mb"] > 1


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
    assert cli_main(["infer", "--bundle", str(BUNDLE), "--models-dir", str(trained["ckpt"]), str(study_dir), "--output",
                     str(out)]) == 0
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
    assert cli_main(["infer", "--bundle", str(BUNDLE), "--models-dir", str(trained["ckpt"]), *map(str, files), "--output",
                     str(out)]) == 0
    images = [img for s in json.loads(out.read_text())["studies"] for img in s["images"]]
    assert sorted(img["path"] for img in images) == sorted(map(str, files))
    assert all(0.0 <= img["probability"] <= 1.0 for img in images)


def test_export_validates_and_every_backend_scores_as_torch(trained, tmp_path):
    models = export_copy("densenet169_wbce", trained["ckpt"], trained["root"], tmp_path / "models")
    assert_exports_agree("densenet169_wbce", models, trained["root"])


def test_infer_names_a_missing_input(trained, tmp_path, capsys):
    missing = tmp_path / "no_such_study"
    assert cli_main(["infer", "--bundle", str(BUNDLE), "--models-dir", str(trained["ckpt"]), str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_metadata_option_trains_evaluates_and_infers_with_age_and_sex(trained, tmp_path):
    ckpt = tmp_path / "models"
    _bundle_run("training", TRAIN, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
                "--output_dir", str(tmp_path / "out"), *TINY, "--metadata", "true",
                "--body_parts", "['XR_WRIST','XR_HAND']")
    assert read_json(ckpt / "model_settings.json")["metadata"] in (True, "true")
    state = torch.load(ckpt / "model.pt", weights_only=True)
    assert state["classifier.weight"].shape == (1, 1664 + 16) and "metadata.0.weight" in state
    assert read_json(ckpt / "training_summary.json")["metadata"] in (True, "true")
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--bundle", str(BUNDLE), "--models-dir", str(ckpt), "--dataset-dir", str(trained["root"]),
                     "--output-dir", str(out), "--n-bootstrap", "0", "--sample-heatmaps", "0"]) == 0
    assert_design_metrics(read_json(out / "metrics.json"), trained["root"])
    _exported_with_age_and_sex(ckpt, trained["root"], tmp_path)


def _exported_with_age_and_sex(ckpt: Path, root: Path, tmp_path: Path) -> None:
    """The metadata network exported whole with its two inputs by `mura-monai export`, validated
    on three real radiographs with ages and sexes known and unknown; every backend scores the
    same images with the same metadata as torch, and with none given (the unknown vector)."""
    import onnx
    from monai.data import load_net_with_metadata

    from mura_monai.data.patient_metadata import metadata_vector

    images = valid_images(root, 3)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli_main(["export", "--bundle", str(BUNDLE), "--models-dir", str(ckpt), "--images", *map(str, images)]) == 0
    assert [line.split()[:2] + line.split()[3:] for line in out.getvalue().splitlines()[1:3]] == [
        ["densenet169_wbce", fmt, "yes", str(ckpt / file)] for fmt, file in (("torchscript", "model.ts"), ("onnx", "model.onnx"))]
    predictors: dict = {}  # each scores the radiographs with their patients' age and sex (patient_metadata.csv)
    record = assert_exports_agree("densenet169_wbce", ckpt, root, images=images, predictors=predictors)
    assert record["batch_sizes"] == [3, 1] and "hybrid" not in record
    people = record["metadata"]["people"]
    assert record["metadata"]["graph_inputs"] == ["image", "metadata"]
    assert {"age": None, "sex": None} in people and len({p["sex"] for p in people}) == 3
    assert [v for row in record["metadata"]["vectors"] for v in row] == pytest.approx(
        [v for p in people for v in metadata_vector(p["age"], p["sex"]).tolist()])
    graph = onnx.load(str(ckpt / "model.onnx"), load_external_data=False)
    assert [i.name for i in graph.graph.input] == ["image", "metadata"]  # open batch on both: assert_exports_agree
    _, meta, extra = load_net_with_metadata(str(ckpt / "model.ts"), more_extra_files=("inference.json",))
    assert meta["version"] == read_json(BUNDLE / "configs" / "metadata.json")["version"] and extra["inference.json"]
    # inference reads age and sex from the DICOM header: the same pixels with another age score
    # differently, alike on every backend, and with none given as with the unknown vector
    reference = predictors["torch"]
    assert reference.uses_metadata
    dicom = sorted((root.parent / "dicom").rglob("*.dcm"))[0]
    prepared = reference.prepare(reference.load(dicom))
    vectors = [metadata_vector(20.0, "F"), metadata_vector(85.0, "M"), metadata_vector(None, None)]
    expected = reference.forward([prepared] * 3, metadata=vectors)
    absent = reference.forward([prepared])
    assert expected[0] != expected[1] and absent == pytest.approx(expected[2:], abs=1e-6)
    for backend in ("torchscript", "onnxruntime"):
        assert predictors[backend].forward([prepared] * 3, metadata=vectors) == pytest.approx(expected, abs=1e-4), backend
        assert predictors[backend].forward([prepared]) == pytest.approx(absent, abs=1e-4), backend
    (study,) = predictors["onnxruntime"].predict([dicom])["studies"]
    assert study["probability"] == pytest.approx(reference.predict([dicom])["studies"][0]["probability"], abs=1e-4)
    _an_ensemble_passes_over_a_member_without_export(ckpt, dicom, absent[0], tmp_path)


def _an_ensemble_passes_over_a_member_without_export(ckpt: Path, dicom: Path, unknown: float, tmp_path: Path) -> None:
    """An ensemble of the exported metadata network and a member whose export is missing (no
    model.onnx, model.ts or export.json): ``auto`` scores the one on ONNX Runtime, its images'
    age and sex unknown as the ensemble gives none, and passes over to torch for the other,
    saying why."""
    from mura_monai.ensemble_predictor import EnsemblePredictor
    from mura_monai.model_settings import save_model_settings
    from tests.ensemble_support import ENSEMBLE, random_member

    ensemble = tmp_path / "ensemble"
    (ensemble / "configs").mkdir(parents=True)
    config = read_json(ENSEMBLE / "configs" / "inference.json")
    config["members"] = [{"name": name, "bundle": str(BUNDLES / name)} for name in ("densenet169_wbce", "resnet50")]
    (ensemble / "configs" / "inference.json").write_text(json.dumps(config))
    shutil.copy(ENSEMBLE / "configs" / "metadata.json", ensemble / "configs")
    members = tmp_path / "members"
    members.mkdir()
    (members / "densenet169_wbce").symlink_to(ckpt, target_is_directory=True)
    random_member("resnet50", members / "resnet50", seed=0)
    save_model_settings(members / "resnet50", image_size=32)
    predictor = EnsemblePredictor(ensemble, device="cpu", members_models_dir=members, fitted=False)
    backends = {name: member.backend_used() for name, member in zip(predictor.member_names, predictor.members)}
    assert backends["densenet169_wbce"] == {"name": "onnxruntime", "reason": "fastest validated"}
    assert backends["resnet50"]["name"] == "torch"
    assert f"onnxruntime: no {members.resolve() / 'resnet50' / 'model.onnx'}" in backends["resnet50"]["reason"]
    _, probabilities = predictor.member_probabilities([dicom])
    assert probabilities[0, predictor.member_names.index("densenet169_wbce")] == pytest.approx(unknown, abs=1e-4)
