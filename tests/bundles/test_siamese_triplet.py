"""siamese_triplet (Regalla and Kudikala's metric learning) through MONAI's bundle CLI.

Trains one epoch at 64 px on P x K batches with the paper's losses (the selectively contrastive
loss, the default, in the module fixture, the focal loss in its own run; batch-hard and plain triplet
are the unit tests'), evaluates to metrics.json with the embedding's
recall@k and both classifiers, scores a study through `mura-monai infer` as the evaluation did,
and trains under torchrun with 2 CPU processes (gloo).
"""
from __future__ import annotations

import pytest
import torch

from mura_monai.cli import main as cli_main
from mura_monai.networks import siamese_net
from tests.bundles.bundle_runner import (
    BUNDLES,
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

NAME = "siamese_triplet"
# ResNet-50 is the lighter of the paper's two backbones on 2 CPU cores; 32-d keeps the k-NN small
TINY = ["--image_size", "64", "--batch_size", "8", "--samples_per_class", "4", "--num_workers", "0",
        "--max_epochs", "1", "--backbone", "resnet50", "--embedding_dim", "32"]


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp(NAME)
    bundle_run(NAME, "training", TRAIN, "--dataset_dir", str(synth_root), "--ckpt_dir", str(work / "models"),
               "--output_dir", str(work / "train_out"), "--head", "knn", "--knn_k", "5", *TINY)
    return {"ckpt": work / "models", "work": work, "root": synth_root}


@pytest.fixture(scope="module")
def evaluated(trained):
    out = trained["work"] / "eval"
    assert cli_main(["evaluate", "--bundle", str(BUNDLES / NAME), "--dataset-dir", str(trained["root"]),
                     "--models-dir", str(trained["ckpt"]), "--output-dir", str(out), "--n-bootstrap", "20"]) == 0
    return out


def test_training_saves_the_embedding_and_its_fitted_classifier(trained):
    settings = read_json(trained["ckpt"] / "model_settings.json")
    assert settings["head"] == "knn" and settings["embedding_dim"] == 32 and settings["enhancement"] == "clahe"
    summary = read_json(trained["ckpt"] / "training_summary.json")
    assert summary["bundle"] == NAME and summary["loss"] == "selectively_contrastive" and summary["train_time_s"] > 0
    net = siamese_net("resnet50", dim=32, head="knn", k=5)
    net.load_state_dict(torch.load(trained["ckpt"] / "model.pt", weights_only=True))
    n_train = len((trained["root"] / "MURA-v1.1" / "train_image_paths.csv").read_text().split())
    assert net.head.reference.shape == (n_train, 32)  # every training image is a k-NN reference, once
    assert set(net.head.reference_labels.tolist()) == {0.0, 1.0}
    assert torch.allclose(net.head.reference.norm(dim=1), torch.ones(n_train), atol=1e-4)


def test_evaluation_reports_kappa_recall_at_k_and_both_classifiers(trained, evaluated):
    doc = read_json(evaluated / "metrics.json")
    assert_design_metrics(doc, trained["root"])
    assert doc["bundle"] == NAME and doc["head"] == "knn"
    embedding = read_json(evaluated / "embedding_metrics.json")
    assert doc["embedding"] == embedding
    recall = embedding["recall_at_k"]
    assert 0.0 <= recall["recall@1"] <= recall["recall@5"] <= recall["recall@10"] <= 1.0
    assert embedding["n_images"] == doc["n_images"]
    assert 0.0 < embedding["mean_pairwise_distance"] <= 2.0
    assert embedding["heads"]["knn"]["auc"] == pytest.approx(doc["study"]["auc"], abs=1e-9)  # the bundle's head
    assert 0.0 <= embedding["heads"]["logistic"]["auc"] <= 1.0
    fusion = read_json(evaluated / "view_fusion.json")  # early fusion through the embedding classifier
    assert {"early_mean", "early_max"} <= set(fusion["methods"])
    assert fusion["methods"]["mean"]["auc"] == pytest.approx(doc["study"]["auc"])
    assert_evaluation_reproduces_training(trained["ckpt"], doc)  # the validated model


def test_mura_monai_infer_scores_a_study_as_the_evaluation_did(trained, evaluated, tmp_path):
    assert_infer_matches_evaluation(NAME, trained["ckpt"], trained["root"], evaluated, tmp_path)


def test_export_of_the_knn_head_validates_and_every_backend_scores_as_torch(trained, tmp_path):
    # the k-NN head's references are buffers: the exported graph carries every training embedding
    models = export_copy(NAME, trained["ckpt"], trained["root"], tmp_path / "models")
    assert_exports_agree(NAME, models, trained["root"])


@pytest.mark.parametrize("loss", ["focal"])  # batch-hard shares the focal loss's miner and path
def test_each_of_the_seeds_losses_trains(synth_root, tmp_path, loss):
    bundle_run(NAME, "training", TRAIN, "--dataset_dir", str(synth_root), "--ckpt_dir", str(tmp_path / "models"),
               "--output_dir", str(tmp_path / "out"), "--loss_name", loss, *TINY)
    summary = read_json(tmp_path / "models" / "training_summary.json")
    assert summary["loss"] == loss and summary["iterations"] > 0
    assert 0.0 <= summary["best_metric"] <= 1.0


def test_a_batch_that_cannot_hold_both_classes_is_refused(synth_root, tmp_path):
    with pytest.raises(AssertionError, match="samples_per_class"):
        bundle_run(NAME, "training", TRAIN, "--dataset_dir", str(synth_root), "--ckpt_dir", str(tmp_path / "m"),
                   *TINY, "--samples_per_class", "3")


def test_ddp_training_on_two_cpu_processes(trained, tmp_path):
    ckpt = tmp_path / "models"
    bundle_run(NAME, "training", MULTI_GPU, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
               "--output_dir", str(tmp_path / "out"), *TINY, launcher=torchrun(2))
    single = read_json(trained["ckpt"] / "training_summary.json")
    ddp = read_json(ckpt / "training_summary.json")
    assert ddp["iterations"] < single["iterations"]  # each rank trained on its share
    net = siamese_net("resnet50", dim=32)
    net.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    n_train = len((trained["root"] / "MURA-v1.1" / "train_image_paths.csv").read_text().split())
    assert net.head.reference.shape[0] == n_train  # the ranks' embeddings gathered, each image once
