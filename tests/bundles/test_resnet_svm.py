"""resnet_svm (Huschauer's ResNet features + bagged SVMs) through MONAI's bundle CLI.

Trains (64 px, random initialisation: the features mean little, the plumbing is what is
tested), evaluates to metrics.json, scores a study through `mura-monai infer` (the same
probabilities as the evaluation), and trains under torchrun with 2 CPU processes (gloo).
"""
from __future__ import annotations

import pytest
import torch

from mura_monai.networks import resnet_svm
from tests.bundles.bundle_runner import (
    EVALUATE,
    MULTI_GPU,
    TRAIN,
    assert_design_metrics,
    assert_evaluation_reproduces_training,
    assert_exports_agree,
    assert_infer_matches_evaluation,
    bundle_run,
    export_copy,
    one_thread,  # noqa: F401 (autouse: one intra-op thread)
    read_json,
    torchrun,
)

NAME = "resnet_svm"
TINY = ["--image_size", "64", "--batch_size", "8", "--num_workers", "0"]


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp(NAME)
    bundle_run(NAME, "training", TRAIN, "--dataset_dir", str(synth_root), "--ckpt_dir", str(work / "models"),
               "--output_dir", str(work / "train_out"), *TINY)
    return {"ckpt": work / "models", "work": work, "root": synth_root}


@pytest.fixture(scope="module")
def evaluated(trained):
    out = trained["work"] / "eval"
    bundle_run(NAME, "evaluating", EVALUATE, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(trained["ckpt"]),
               "--output_dir", str(out), "--n_bootstrap", "30", *TINY)
    return out


def test_training_fits_ten_degree_5_svms_and_records_them(trained):
    summary = read_json(trained["ckpt"] / "training_summary.json")
    assert summary["bundle"] == NAME and summary["train_time_s"] > 0
    assert summary["svm"]["n_estimators"] == 10 and summary["svm"]["degree"] == 5
    assert summary["svm"]["n_support_vectors"] > 0
    n_train = len((trained["root"] / "MURA-v1.1" / "train_image_paths.csv").read_text().split())
    assert summary["n_train_images"] == n_train
    assert 0.0 <= summary["best_metric"] == summary["val_study_auc"] <= 1.0
    assert read_json(trained["ckpt"] / "model_settings.json")["image_size"] == 64


def test_model_pt_loads_weights_only_into_the_inference_network(trained):
    net = resnet_svm()
    net.load_state_dict(torch.load(trained["ckpt"] / "model.pt", weights_only=True))
    assert net.head.n_estimators == 10 and net.head.n_support_vectors > 0


def test_evaluating_writes_design_metrics_with_the_validation_auc_of_training(trained, evaluated):
    doc = read_json(evaluated / "metrics.json")
    assert_design_metrics(doc, trained["root"])
    assert doc["bundle"] == NAME
    summary = read_json(trained["ckpt"] / "training_summary.json")
    assert doc["training"]["train_time_s"] == summary["train_time_s"]
    assert_evaluation_reproduces_training(trained["ckpt"], doc)  # same model, same images
    fusion = read_json(evaluated / "view_fusion.json")  # no linear classifier: the late rules only
    assert set(fusion["methods"]) == {"mean", "max", "median", "learned"}
    assert fusion["methods"]["mean"]["auc"] == pytest.approx(doc["study"]["auc"])


def test_mura_monai_infer_scores_a_study_as_the_evaluation_did(trained, evaluated, tmp_path):
    assert_infer_matches_evaluation(NAME, trained["ckpt"], trained["root"], evaluated, tmp_path)


def test_export_keeps_the_float64_svm_kernel_and_every_backend_scores_as_torch(trained, tmp_path):
    import onnx

    models = export_copy(NAME, trained["ckpt"], trained["root"], tmp_path / "models")
    assert_exports_agree(NAME, models, trained["root"])
    # the degree-5 kernel runs in double in ONNX Runtime too, as scikit-learn evaluates it
    graph = onnx.load(str(models / "model.onnx"), load_external_data=False).graph
    to_double = [n for n in graph.node if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE
                                                                        for a in n.attribute)]
    assert to_double and any(n.op_type == "Pow" for n in graph.node)


def test_ddp_training_on_two_cpu_processes_fits_the_same_table(trained, tmp_path):
    ckpt = tmp_path / "models"
    bundle_run(NAME, "training", MULTI_GPU, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
               "--output_dir", str(tmp_path / "out"), *TINY, launcher=torchrun(2))
    single = read_json(trained["ckpt"] / "training_summary.json")
    ddp = read_json(ckpt / "training_summary.json")
    assert ddp["iterations"] < single["iterations"]  # each rank extracted its share
    assert ddp["n_train_images"] == single["n_train_images"]  # gathered, each image once
    # the same rows in the same order: the fit differs only by the features' float rounding
    assert ddp["svm"]["platt_a_b"] == pytest.approx(single["svm"]["platt_a_b"], rel=1e-2)
    net = resnet_svm()
    net.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    assert net.head.n_estimators == 10
