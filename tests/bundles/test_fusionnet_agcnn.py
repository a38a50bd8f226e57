"""fusionnet_agcnn through MONAI's bundle CLI: three stages, evaluation, inference, export, resume, DDP, compare."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mura_monai.cli import main as cli_main
from mura_monai.networks import AttentionGuidedCNN
from tests.bundles.bundle_runner import (
    BUNDLES,
    EVALUATE,
    MULTI_GPU,
    TRAIN,
    assert_changed_part_falls_back_to_torch,
    assert_design_metrics,
    assert_evaluation_reproduces_training,
    assert_exports_agree,
    bundle_run,
    export_copy,
    read_json,
    torchrun,
    valid_images,
)

BUNDLE = "fusionnet_agcnn"
TINY = ["--image_size", "64", "--batch_size", "8", "--num_workers", "0"]
ONE_EACH = ["--stage_epochs", "{'global': 1, 'local': 1, 'fusion': 1}"]


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("agcnn")
    ckpt = work / "models"
    # --max_epochs 3 with the default 10/5/5 stages: scaled to one epoch each (it used to end the
    # run inside the global stage, leaving a model.pt whose fusion stage never trained)
    proc = bundle_run(BUNDLE, "training", TRAIN, "--dataset_dir", str(synth_root), "--ckpt_dir", str(ckpt),
                      "--output_dir", str(work / "train_out"), *TINY, "--max_epochs", "3")
    return {"ckpt": ckpt, "work": work, "root": synth_root, "log": proc.stdout + proc.stderr}


def test_training_runs_the_three_stages_in_order_and_keeps_the_fusion_model(trained):
    stages = read_json(trained["ckpt"] / "stages.json")["stages"]
    assert [(s["stage"], s["first_epoch"], s["last_epoch"]) for s in stages] == [
        ("global", 1, 1), ("local", 2, 2), ("fusion", 3, 3)]
    assert "stage local from epoch 2" in trained["log"] and "stage fusion from epoch 3" in trained["log"]
    assert "max_epochs 3 spread over the stages as global 1, local 1, fusion 1" in trained["log"]
    summary = read_json(trained["ckpt"] / "training_summary.json")
    assert summary["epochs_completed"] == 3 and summary["best_metric_epoch"] == 3  # model.pt: the fusion stage's best
    settings = read_json(trained["ckpt"] / "model_settings.json")
    assert settings["backbone"] == "resnet50" and settings["attention_threshold"] == 0.7


def test_each_stage_changed_its_own_branch(trained):
    """model.pt (after the fusion stage) differs from a fresh network in all three parts, and the
    epoch-1 global weights survived the later stages that held them fixed."""
    state = torch.load(trained["ckpt"] / "model.pt", weights_only=True)
    state = state.get("model", state)
    torch.manual_seed(0)
    fresh = AttentionGuidedCNN(in_channels=1).state_dict()
    for part in ("global_branch.net.fc.weight", "local_branch.net.fc.weight", "fusion.weight"):
        assert not torch.equal(state[part], fresh[part]), part
    epoch_ckpt = torch.load(trained["ckpt"] / "checkpoint_epoch=3.pt", weights_only=True)
    assert torch.equal(epoch_ckpt["model"]["global_branch.net.conv1.weight"], state["global_branch.net.conv1.weight"])
    assert epoch_ckpt["stages"]["index"] == 2


def test_evaluate_infer_and_compare(trained, tmp_path):
    out = trained["work"] / "eval"
    bundle_run(BUNDLE, "evaluating", EVALUATE, "--dataset_dir", str(trained["root"]), "--ckpt_dir",
               str(trained["ckpt"]), "--output_dir", str(out), "--n_bootstrap", "20", *TINY)
    doc = read_json(out / "metrics.json")
    assert_design_metrics(doc, trained["root"])
    assert_evaluation_reproduces_training(trained["ckpt"], doc)
    assert doc["bundle"] == BUNDLE and doc["training"]["checkpoint_mb"] > 1
    study = sorted((trained["root"] / "MURA-v1.1" / "valid").glob("XR_*/patient*/study*"))[0]
    assert cli_main(["infer", "--bundle", str(BUNDLES / BUNDLE), "--models-dir", str(trained["ckpt"]), str(study),
                     "--output", str(tmp_path / "infer.json")]) == 0
    (result,) = json.loads((tmp_path / "infer.json").read_text())["studies"]
    assert 0.0 <= result["probability"] <= 1.0 and len(result["images"]) == len(list(study.glob("*.png")))
    assert cli_main(["compare", str(out), "--output-dir", str(tmp_path / "cmp")]) == 0
    assert BUNDLE in (tmp_path / "cmp" / "comparison.md").read_text()


def test_view_fusion_rules_are_compared_and_selectable_at_inference(trained, tmp_path):
    out = trained["work"] / "eval"
    if not (out / "view_fusion.json").is_file():
        pytest.skip("needs the evaluation of test_evaluate_infer_and_compare")
    fusion = read_json(out / "view_fusion.json")
    assert set(fusion["methods"]) == {"mean", "max", "median", "learned", "early_mean", "early_max"}
    metrics = read_json(out / "metrics.json")
    assert fusion["methods"]["mean"]["auc"] == pytest.approx(metrics["study"]["auc"])  # the same pass, MURA's rule
    assert "| mean (MURA's image averaging) |" in (out / "view_fusion.md").read_text()
    study = sorted((trained["root"] / "MURA-v1.1" / "valid").glob("XR_*/patient*/study*"))[0]
    results = {}
    for rule in ("mean", "early_mean", "early_max", "learned"):
        args = ["infer", "--bundle", str(BUNDLES / BUNDLE), "--models-dir", str(trained["ckpt"]), str(study),
                "--view-fusion", rule, "--view-fusion-file", str(out / "view_fusion.json"),
                "--output", str(tmp_path / f"{rule}.json")]
        assert cli_main(args) == 0
        doc = read_json(tmp_path / f"{rule}.json")
        assert doc["view_fusion"] == rule
        results[rule] = doc["studies"][0]["probability"]
    # the network's classifier is linear: pooling its input by the mean is averaging logits
    mean_logit = torch.logit(torch.tensor([i["probability"] for i in read_json(tmp_path / "mean.json")["studies"][0]["images"]],
                                          dtype=torch.float64)).mean()
    assert results["early_mean"] == pytest.approx(float(torch.sigmoid(mean_logit)), abs=1e-5)
    assert len(set(round(v, 6) for v in results.values())) >= 3


def test_zoom_evaluates_beside_the_same_model_without_it(trained, tmp_path):
    out = tmp_path / "zoom_eval"
    assert cli_main(["evaluate", "--bundle", str(BUNDLES / BUNDLE), "--models-dir", str(trained["ckpt"]), "--dataset-dir",
                     str(trained["root"]), "--output-dir", str(out), "--zoom", "--n-bootstrap", "0",
                     "--sample-heatmaps", "0"]) == 0
    doc = read_json(out / "metrics.json")
    assert_design_metrics(doc, trained["root"])
    assert {"study", "image"} <= set(doc["without_zoom"]) and 0 < doc["zoom"]["mean_box_fraction"] <= 1
    assert "Zoom to attention" in (out / "report.html").read_text()
    images = read_json(out / "predictions.json")["images"]
    for image in images:
        r0, c0, r1, c1 = image["zoom_box"]
        assert 0 <= r0 < r1 and 0 <= c0 < c1
        assert image["probability"] == pytest.approx((image["probability_first"] + image["probability_zoomed"]) / 2)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained network exported in parts, into a copy of its checkpoint folder, validated on
    three real radiographs (batches of 3 and 1)."""
    return export_copy(BUNDLE, trained["ckpt"], trained["root"], tmp_path_factory.mktemp("exported") / "models",
                       images=valid_images(trained["root"], 3))


def test_hybrid_export_validates_and_every_backend_scores_as_torch(trained, exported):
    """The global branch, the local branch and the fusion layer are exported one file each; the
    crop between them runs the network's own attention_boxes on the exported global branch's
    feature map, so the whole pipeline scores as the eager network does."""
    predictors: dict = {}
    record = assert_exports_agree(BUNDLE, exported, trained["root"], images=valid_images(trained["root"], 3),
                                  predictors=predictors)
    assert record["hybrid"] == {"network": "AttentionGuidedCNN", "parts": ["global", "local", "fusion"]}
    assert record["batch_sizes"] == [3, 1] and record["inputs"] == "3 prepared radiographs"
    for fmt, suffix in (("torchscript", "ts"), ("onnx", "onnx")):
        assert {part: entry["file"] for part, entry in record["formats"][fmt]["parts"].items()} == {
            part: f"model.{part}.{suffix}" for part in ("global", "local", "fusion")}
    assert not (exported / "model.onnx").exists() and not (exported / "model.ts").exists()
    assert list(predictors["onnxruntime"].runner.parts) == list(predictors["torchscript"].runner.parts) == [
        "global", "local", "fusion"]


def test_validate_only_and_a_changed_part_file_falls_back_to_torch(trained, exported, tmp_path, capsys):
    assert cli_main(["export", "--bundle", str(BUNDLES / BUNDLE), "--models-dir", str(exported), "--validate-only",
                     "--format", "onnx"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[:2] == [BUNDLE, "onnx"] and rows[1].split()[3:] == [
        "yes", str(exported / "model.{global,local,fusion}.onnx")]
    reason = assert_changed_part_falls_back_to_torch(BUNDLE, exported, tmp_path / "changed", "local")
    assert "onnxruntime: model.local.onnx changed after its validation" in reason


def test_resume_continues_the_fusion_stage(trained, tmp_path):
    ckpt = tmp_path / "models"
    shutil.copytree(trained["ckpt"], ckpt)
    bundle_run(BUNDLE, "training", TRAIN, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
               "--output_dir", str(tmp_path / "out"), *TINY, "--stage_epochs", "{'global': 1, 'local': 1, 'fusion': 2}",
               "--resume", "true")
    stages = read_json(ckpt / "stages.json")["stages"]
    assert [(s["stage"], s["first_epoch"], s["last_epoch"]) for s in stages] == [
        ("global", 1, 1), ("local", 2, 2), ("fusion", 3, 4)]
    assert read_json(ckpt / "training_summary.json")["epochs_completed"] == 4


def test_ddp_training_on_two_cpu_processes(trained, tmp_path):
    ckpt = tmp_path / "models"
    bundle_run(BUNDLE, "training", MULTI_GPU, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
               "--output_dir", str(tmp_path / "out"), *TINY, *ONE_EACH, launcher=torchrun(2))
    single = read_json(trained["ckpt"] / "training_summary.json")
    ddp = read_json(ckpt / "training_summary.json")
    assert ddp["epochs_completed"] == 3 and ddp["iterations"] < single["iterations"]
    assert [s["stage"] for s in read_json(ckpt / "stages.json")["stages"]] == ["global", "local", "fusion"]


@pytest.mark.parametrize("stage_epochs, stage", [({"global": 10, "local": 5, "fusion": 5}, "fusion"),
                                                 ({"global": 4, "local": 0, "fusion": 0}, "global"),
                                                 ({"global": 2, "local": 2, "fusion": 0}, "local")])
def test_evaluation_and_inference_read_the_last_trained_stage(stage_epochs, stage, tmp_path):
    # --stage_epochs "{'global': 4, 'local': 0, 'fusion': 0}" used to train the global branch and then
    # evaluate and serve the fusion logit of a fusion layer and a local branch still at random
    # initialisation (study AUC 0.49 where the trained global branch had 0.66)
    from monai.bundle import ConfigParser

    from mura_monai.inference import BundlePredictor
    from mura_monai.model_settings import load_model_settings, save_model_settings

    configs = BUNDLES / BUNDLE / "configs"
    train = ConfigParser()
    train.read_config(str(configs / "train.json"))
    train.update({"stage_epochs": stage_epochs, "ckpt_dir": str(tmp_path)})
    save_model_settings(tmp_path, **train.get_parsed_content("model_settings"))
    assert load_model_settings(tmp_path)["output_stage"] == stage

    evaluation = ConfigParser()
    evaluation.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    evaluation.update(load_model_settings(tmp_path))  # what mura-monai evaluate replays
    assert evaluation.get_parsed_content("network_def").stage == stage

    torch.save(AttentionGuidedCNN(in_channels=1).state_dict(), tmp_path / "model.pt")
    predictor = BundlePredictor(BUNDLES / BUNDLE, device="cpu", models_dir=tmp_path)
    assert predictor.loaded.network.stage == stage
