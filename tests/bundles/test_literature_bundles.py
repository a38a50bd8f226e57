"""resnet50, vgg19 and efficientnet_b0_router through MONAI's bundle CLI, as a researcher runs them.

Each bundle trains (1 epoch, 64 px, random initialisation), evaluates to metrics.json, scores
a study through `mura-monai infer`, and trains under torchrun with 2 CPU processes (gloo).
"""
from __future__ import annotations

import json

import pytest
import torch

from mura_monai.cli import main as cli_main
from mura_monai.constants import BODY_PARTS
from tests.bundles.bundle_runner import (
    BUNDLES,
    EVALUATE,
    MULTI_GPU,
    TRAIN,
    assert_design_metrics,
    assert_evaluation_reproduces_training,
    assert_members_reproduce_training,
    bundle_run,
    read_json,
    torchrun,
)

TINY = ["--image_size", "64", "--max_epochs", "1", "--batch_size", "8", "--num_workers", "0"]
# VGG-19's 4096-wide head is 120 M parameters: a narrow one keeps the CPU test small
EXTRA = {"resnet50": [], "vgg19": ["--classifier_width", "256"],
         "efficientnet_b0_router": ["--part_learning_rate", "0.00005"]}


@pytest.fixture(scope="module", params=sorted(EXTRA))
def trained(request, synth_root, tmp_path_factory):
    name = request.param
    work = tmp_path_factory.mktemp(name)
    ckpt = work / "models"
    bundle_run(name, "training", TRAIN, "--dataset_dir", str(synth_root), "--ckpt_dir", str(ckpt),
               "--output_dir", str(work / "train_out"), *TINY, *EXTRA[name])
    return {"name": name, "ckpt": ckpt, "work": work, "root": synth_root}


def test_training_keeps_best_model_summary_and_settings(trained):
    assert (trained["ckpt"] / "model.pt").stat().st_size > 100_000
    summary = read_json(trained["ckpt"] / "training_summary.json")
    assert summary["train_time_s"] > 0 and summary["n_parameters"] > 1_000_000
    assert summary["bundle"] == trained["name"]
    assert read_json(trained["ckpt"] / "model_settings.json")["image_size"] == 64


def test_evaluating_writes_design_metrics_with_training_figures(trained):
    out = trained["work"] / "eval"
    bundle_run(trained["name"], "evaluating", EVALUATE, "--dataset_dir", str(trained["root"]), "--ckpt_dir",
               str(trained["ckpt"]), "--output_dir", str(out), "--n_bootstrap", "30", *TINY, *EXTRA[trained["name"]])
    doc = read_json(out / "metrics.json")
    assert_design_metrics(doc, trained["root"])
    summary = read_json(trained["ckpt"] / "training_summary.json")
    if trained["name"] == "efficientnet_b0_router":
        # model.pt joins the router and the part models, each validated on its own split while
        # training; the routed whole never was, so each member of it must reproduce its own best
        reproduced = assert_members_reproduce_training(trained["name"], trained["ckpt"],
                                                       dataset_dir=str(trained["root"]), image_size=64)
        assert set(reproduced) == {"router", *read_json(trained["ckpt"] / "routing.json")["parts"]}
    else:
        assert_evaluation_reproduces_training(trained["ckpt"], doc)
    assert doc["bundle"] == trained["name"]
    assert doc["training"]["train_time_s"] == summary["train_time_s"]
    assert doc["training"]["checkpoint_mb"] > 0.1


def test_mura_monai_infer_scores_a_study(trained, tmp_path):
    study = sorted((trained["root"] / "MURA-v1.1" / "valid").glob("XR_*/patient*/study*"))[0]
    out = tmp_path / "infer.json"
    assert cli_main(["infer", "--bundle", str(BUNDLES / trained["name"]), "--models-dir", str(trained["ckpt"]),
                     str(study), "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["bundle"] == trained["name"]  # the bundle's name, whatever path it was called by
    (result,) = doc["studies"]
    assert len(result["images"]) == len(list(study.glob("*.png")))
    assert 0.0 <= result["probability"] <= 1.0


def test_ddp_training_on_two_cpu_processes(trained, tmp_path):
    ckpt = tmp_path / "models"
    bundle_run(trained["name"], "training", MULTI_GPU, "--dataset_dir", str(trained["root"]), "--ckpt_dir", str(ckpt),
               "--output_dir", str(tmp_path / "out"), *TINY, *EXTRA[trained["name"]], launcher=torchrun(2))
    single = read_json(trained["ckpt"] / "training_summary.json")
    ddp = read_json(ckpt / "training_summary.json")
    if trained["name"] == "efficientnet_b0_router":
        single, ddp = single["models"]["router"], ddp["models"]["router"]
    assert ddp["iterations"] < single["iterations"]  # each rank ran its share of the epoch
    assert (ckpt / "model.pt").is_file()


@pytest.mark.parametrize("trained", ["efficientnet_b0_router"], indirect=True)
def test_router_pipeline_trains_router_and_every_part(trained):
    ckpt = trained["ckpt"]
    manifest = read_json(ckpt / "routing.json")
    assert manifest["parts"] == list(BODY_PARTS)
    summary = read_json(ckpt / "training_summary.json")
    assert summary["n_models"] == 8 and set(summary["models"]) == {"router", *BODY_PARTS}
    # no pretrained file: the parts were fine-tuned from an all-parts model, whose time counts too
    assert set(summary["initialising_models"]) == {"all_parts"}
    # the parts fine-tune at their own rate; the router and the all-parts model train at --learning_rate
    assert {summary["models"][p]["learning_rate"] for p in BODY_PARTS} == {0.00005}
    assert summary["models"]["router"]["learning_rate"] == summary["initialising_models"]["all_parts"]["learning_rate"] == 0.0001
    trained_models = [*summary["models"].values(), *summary["initialising_models"].values()]
    assert summary["train_time_s"] == pytest.approx(sum(m["train_time_s"] for m in trained_models), abs=0.05)
    for target in ["router", "all_parts", *BODY_PARTS]:
        assert (ckpt / target / "model.pt").is_file()
    shared = torch.load(ckpt / "all_parts" / "model.pt", map_location="cpu", weights_only=True)
    parts = {p: torch.load(ckpt / p / "model.pt", map_location="cpu", weights_only=True) for p in BODY_PARTS}
    # every part started from the all-parts model and kept its early layers (Patel et al.'s freeze);
    # heads trained on their part (a part whose few tiny-root images share one label has zero loss)
    assert all(torch.equal(w["_conv_stem.weight"], shared["_conv_stem.weight"]) for w in parts.values())
    assert any(not torch.equal(w["_fc.weight"], shared["_fc.weight"]) for w in parts.values())
    out = trained["work"] / "eval"
    if not (out / "metrics.json").is_file():
        pytest.skip("needs the evaluation of test_evaluating_writes_design_metrics_with_training_figures")
    doc = read_json(out / "metrics.json")
    assert 0.0 <= doc["routing"]["router_accuracy"] <= 1.0
    assert sum(map(sum, doc["routing"]["confusion"]["matrix"])) == doc["n_images"]
    table = (out / "patel_et_al_table.md").read_text()
    assert "| TP | FN | FP | TN |" in table and "Router (bone detector) accuracy" in table
    assert all(part in table for part in doc["per_body_part"])
