"""Patel et al.'s router pipeline pieces: targets, validation data, transfer freeze, joined checkpoint, report."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from ignite.engine import Engine
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mura_monai.constants import BODY_PART_INDEX, BODY_PARTS
from mura_monai.data import mura_datalist
from mura_monai.data.splits import holdout_split
from mura_monai.engines.training_summary import SUMMARY_FILE
from mura_monai.networks import count_parameters, efficientnet_b0
from mura_monai.networks.routed import RoutedClassifier
from mura_monai.report import format_patel_et_al_table
from mura_monai.routing import (
    MANIFEST_FILE,
    ROUTER,
    SHARED,
    RoutingReportWriter,
    build_routed_classifier,
    combine_checkpoints,
    initial_weights,
    target_records,
    trainable_targets,
    transfer_network,
    uses_shared_init,
    validation_records,
)

LOGGER = "mura_monai.routing"


def _records(*parts: str) -> list[dict]:
    return [{"image": f"/{p}/image{i}.png", "body_part": p, "patient": f"{p}-{i}"} for p in parts for i in range(2)]


# --- trainable_targets ---------------------------------------------------------------------------

def test_targets_are_router_then_parts_in_body_part_order():
    records = _records("XR_WRIST", "XR_ELBOW", "XR_HAND")
    assert trainable_targets(records) == [ROUTER, "XR_ELBOW", "XR_HAND", "XR_WRIST"]
    assert trainable_targets(records, ["XR_WRIST", "XR_ELBOW"]) == [ROUTER, "XR_ELBOW", "XR_WRIST"]


def test_all_seven_parts_in_order():
    assert trainable_targets(_records(*reversed(BODY_PARTS))) == [ROUTER, *BODY_PARTS]


def test_parts_without_images_are_warned_and_skipped(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        targets = trainable_targets(_records("XR_WRIST"), ["XR_SHOULDER", "XR_WRIST"])
    assert targets == [ROUTER, "XR_WRIST"]
    assert "'XR_SHOULDER'" in caplog.text and "'XR_WRIST'" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert trainable_targets(_records("XR_WRIST", "XR_HAND")) == [ROUTER, "XR_HAND", "XR_WRIST"]
    assert "XR_ELBOW" in caplog.text  # no images for the other five parts either


def test_no_part_with_images_is_an_error():
    with pytest.raises(ValueError, match="no body part"):
        trainable_targets(_records("XR_WRIST"), ["XR_SHOULDER"])
    with pytest.raises(ValueError, match="no body part"):
        trainable_targets([])


def test_the_all_parts_model_trains_after_the_router_and_before_the_parts():
    records = _records("XR_WRIST", "XR_HAND")
    assert trainable_targets(records, shared_init=True) == [ROUTER, SHARED, "XR_HAND", "XR_WRIST"]
    assert trainable_targets(records, ["XR_WRIST"], shared_init=True) == [ROUTER, SHARED, "XR_WRIST"]


# --- shared initialisation of the part models ----------------------------------------------------

@pytest.mark.parametrize(("part_init", "pretrained", "expected"), [
    ("auto", "", True), ("auto", "/w/imagenet.pt", False), ("shared", "/w/imagenet.pt", True),
    ("shared", "", True), ("pretrained", "", False), ("pretrained", "/w/imagenet.pt", False),
])
def test_parts_start_from_the_all_parts_model_unless_imagenet_weights_are_given(part_init, pretrained, expected):
    assert uses_shared_init(part_init, pretrained) is expected


def test_an_unknown_part_init_names_the_choices():
    with pytest.raises(ValueError, match="auto.*shared.*pretrained"):
        uses_shared_init("imagenet", "")


def test_part_weights_come_from_the_all_parts_checkpoint(tmp_path):
    (tmp_path / SHARED).mkdir()
    (tmp_path / SHARED / "model.pt").write_bytes(b"weights")
    assert initial_weights("XR_WRIST", "/w/imagenet.pt", True, tmp_path) == str(tmp_path / SHARED / "model.pt")
    # the router and the all-parts model itself start from the user's file (or random)
    assert initial_weights(ROUTER, "/w/imagenet.pt", True, tmp_path) == "/w/imagenet.pt"
    assert initial_weights(SHARED, "", True, tmp_path) == ""
    assert initial_weights("XR_WRIST", "/w/imagenet.pt", False, tmp_path) == "/w/imagenet.pt"


def test_a_part_before_its_all_parts_model_is_told_what_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--target {SHARED}"):
        initial_weights("XR_WRIST", "", True, tmp_path)


def test_router_and_all_parts_model_train_on_every_part():
    records = _records("XR_WRIST", "XR_HAND")
    assert target_records(records, ROUTER) == records and target_records(records, SHARED) == records
    assert {r["body_part"] for r in target_records(records, "XR_HAND")} == {"XR_HAND"}
    held = _records("XR_ELBOW")
    assert validation_records((records, held), SHARED) == held


# --- validation_records --------------------------------------------------------------------------

def test_validation_uses_held_out_patients():
    train, held = _records("XR_HAND", "XR_WRIST"), _records("XR_WRIST")
    assert validation_records((train, held), "XR_WRIST") == held
    assert validation_records((train, held), ROUTER) == held


def test_validation_falls_back_to_training_images_with_a_warning(caplog):
    train, held = _records("XR_HAND", "XR_WRIST"), _records("XR_WRIST")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        records = validation_records((train, held), "XR_HAND")
    assert records == [r for r in train if r["body_part"] == "XR_HAND"] and len(records) == 2
    assert "XR_HAND" in caplog.text and "no held-out patient" in caplog.text


def test_validation_records_on_a_mura_root(tiny_mura_root, caplog):
    """tiny_mura_root: two wrist patients, one hand patient (two studies) in the train split."""
    split = holdout_split(mura_datalist(tiny_mura_root, "train"), 0.2, seed=0)
    wrist = validation_records(split, "XR_WRIST")
    assert len({r["patient"] for r in wrist}) == 1 and wrist == [r for r in split[1] if r["body_part"] == "XR_WRIST"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hand = validation_records(split, "XR_HAND")
    assert len(hand) == 3 and {r["patient"] for r in hand} == {"patient00003"}
    assert "no held-out patient" in caplog.text
    assert trainable_targets(split[0]) == [ROUTER, "XR_HAND", "XR_WRIST"]


# --- transfer_network ----------------------------------------------------------------------------

def _batchnorms(net: nn.Module) -> list[_BatchNorm]:
    return [m for m in net.modules() if isinstance(m, _BatchNorm)]


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "efficientnet_b0_router.pt"
    torch.save(efficientnet_b0(in_channels=1, out_channels=7).state_dict(), path)
    return path


def test_transfer_with_pretrained_weights_freezes_all_but_the_last_layers(pretrained_file):
    net = transfer_network(out_channels=1, pretrained_path=str(pretrained_file), trainable_layers=20)
    saved = torch.load(pretrained_file, map_location="cpu", weights_only=True)
    assert torch.equal(net._conv_stem.weight, saved["_conv_stem.weight"])  # the weights were loaded
    assert net._fc.weight.shape == (1, 1280)  # the 7-class head did not fit and stays new
    counts = count_parameters(net)
    assert 0 < counts["trainable"] < counts["total"]
    assert net._fc.weight.requires_grad and net._conv_head.weight.requires_grad
    assert not net._conv_stem.weight.requires_grad
    net.train()
    assert all(not bn.training for bn in _batchnorms(net)) and len(_batchnorms(net)) > 0
    assert not any(p.requires_grad for bn in _batchnorms(net) for p in bn.parameters())


def test_more_trainable_layers_train_more_parameters(pretrained_file):
    few = count_parameters(transfer_network(1, pretrained_path=str(pretrained_file), trainable_layers=5))["trainable"]
    many = count_parameters(transfer_network(1, pretrained_path=str(pretrained_file), trainable_layers=40))["trainable"]
    assert 0 < few < many


def test_transfer_without_weights_trains_everything(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        net = transfer_network(out_channels=7, pretrained_path=None, trainable_layers=20)
    counts = count_parameters(net)
    assert counts["trainable"] == counts["total"]
    net.train()
    assert all(bn.training for bn in _batchnorms(net))
    assert "no pretrained weights" in caplog.text
    assert count_parameters(transfer_network(out_channels=1, pretrained_path=""))["trainable"] == counts["total"] - 6 * 1280 - 6


# --- combine_checkpoints / build_routed_classifier -----------------------------------------------

def _trained_folder(root, parts=("XR_WRIST",), times=(10.5, 20.25)):
    """What the per-target trainings leave: ``<target>/model.pt`` and ``<target>/training_summary.json``."""
    torch.manual_seed(1)
    nets = {ROUTER: efficientnet_b0(in_channels=1, out_channels=len(BODY_PARTS))}
    nets |= {p: efficientnet_b0(in_channels=1, out_channels=1) for p in parts}
    for (target, net), seconds in zip(nets.items(), times):
        (root / target).mkdir(parents=True)
        torch.save(net.state_dict(), root / target / "model.pt")
        summary = {"train_time_s": seconds, "epochs_completed": 3 if target == ROUTER else 5, "n_parameters": 100,
                   "n_trainable_parameters": 40, "model_size_mb": 15.5, "bundle": "efficientnet_b0_router", "image_size": 32}
        (root / target / SUMMARY_FILE).write_text(json.dumps(summary))
    return nets


def test_combined_checkpoint_loads_strictly_into_the_routed_classifier(tmp_path):
    nets = _trained_folder(tmp_path)
    summary = combine_checkpoints(tmp_path, ["XR_WRIST"])
    assert json.loads((tmp_path / MANIFEST_FILE).read_text()) == {"router": ROUTER, "parts": ["XR_WRIST"]}
    model = build_routed_classifier(tmp_path)
    assert list(model.parts) == ["XR_WRIST"]
    state = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.router._fc.weight, nets[ROUTER]._fc.weight)
    assert torch.equal(model.parts["XR_WRIST"]._conv_stem.weight, nets["XR_WRIST"]._conv_stem.weight)
    assert all(k.startswith(("router.", "parts.XR_WRIST.")) for k in state)

    written = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert written == summary
    assert written["train_time_s"] == pytest.approx(30.75)
    assert written["n_models"] == 2 and written["epochs_completed"] == 5
    assert written["n_parameters"] == 200 and written["model_size_mb"] == pytest.approx(31.0)
    assert written["bundle"] == "efficientnet_b0_router" and written["image_size"] == 32
    assert set(written["models"]) == {ROUTER, "XR_WRIST"}

    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 1)
    assert model.last_route.tolist() == [BODY_PART_INDEX["XR_WRIST"]] * 2  # the only part with a model


def test_the_all_parts_model_counts_in_train_time_but_not_in_the_joined_model(tmp_path):
    _trained_folder(tmp_path)
    (tmp_path / SHARED).mkdir()
    torch.save(efficientnet_b0(in_channels=1, out_channels=1).state_dict(), tmp_path / SHARED / "model.pt")
    (tmp_path / SHARED / SUMMARY_FILE).write_text(json.dumps({"train_time_s": 7.0, "model_size_mb": 15.5}))
    summary = combine_checkpoints(tmp_path, ["XR_WRIST"], helpers=[SHARED])
    assert summary["train_time_s"] == pytest.approx(37.75)
    assert summary["n_models"] == 2 and summary["model_size_mb"] == pytest.approx(31.0)
    assert set(summary["initialising_models"]) == {SHARED}
    state = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith(f"parts.{SHARED}") for k in state)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["parts"] == ["XR_WRIST"]


def test_missing_part_checkpoint_is_named(tmp_path):
    _trained_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="XR_HAND"):
        combine_checkpoints(tmp_path, ["XR_WRIST", "XR_HAND"])
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / MANIFEST_FILE).exists()


def test_missing_router_checkpoint_is_named(tmp_path):
    _trained_folder(tmp_path)
    (tmp_path / ROUTER / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=ROUTER):
        combine_checkpoints(tmp_path, ["XR_WRIST"])


def test_build_without_manifest_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=MANIFEST_FILE):
        build_routed_classifier(tmp_path)


# --- report --------------------------------------------------------------------------------------

def _metrics() -> dict:
    block = lambda tp, fn, fp, tn: {"tp": tp, "fn": fn, "fp": fp, "tn": tn, "accuracy": (tp + tn) / (tp + fn + fp + tn),  # noqa: E731
                                    "precision": tp / (tp + fp), "sensitivity": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn)}
    return {
        "per_body_part": {"XR_HAND": block(8, 2, 1, 9), "XR_WRIST": block(5, 5, 0, 10)},
        "study": block(13, 7, 1, 19),
        "routing": {"router_accuracy": 0.95, "n_images": 40},
        "training": {"n_models": 3, "model_size_mb": 46.5, "train_time_s": 1234.4,
                     "models": {ROUTER: {"model_size_mb": 15.5}, "XR_HAND": {"model_size_mb": 15.5},
                                "XR_WRIST": {"model_size_mb": 15.5}}},
    }


def test_patel_et_al_table():
    table = format_patel_et_al_table(_metrics())
    lines = table.splitlines()
    assert lines[0] == "| Body part | TP | FN | FP | TN | Accuracy | Precision | Sensitivity | F1 |"
    assert "| TP | FN | FP | TN |" in lines[0]
    assert lines[1] == "|---" * 9 + "|"
    assert lines[2] == "| XR_HAND | 8 | 2 | 1 | 9 | 0.850 | 0.889 | 0.800 | 0.842 |"
    assert lines[3].startswith("| XR_WRIST | 5 | 5 | 0 | 10 | 0.750 | 1.000 | 0.500 |")
    assert lines[4].startswith("| Average / all studies | 13 | 7 | 1 | 19 |")
    assert "Router (bone detector) accuracy: 0.950 on 40 images." in table
    assert "Models: 3, 46.5 MB in all (router 15.5 MB, XR_HAND 15.5 MB, XR_WRIST 15.5 MB)." in table
    assert "Training time: 1234 s in all." in table


def test_patel_et_al_table_without_routing_or_training():
    table = format_patel_et_al_table({"per_body_part": {"XR_HAND": {"tp": 1}}, "study": {}})
    assert "| XR_HAND | 1 | — | — |" in table
    assert "Router" not in table and "Models:" not in table


# --- RoutingReportWriter -------------------------------------------------------------------------

class _FirstPixelRouter(nn.Module):
    def forward(self, x):
        return x[:, 0, 0, : len(BODY_PARTS)]


class _Zero(nn.Module):
    def forward(self, x):
        return x.new_zeros(x.shape[0], 1)


def test_routing_report_writer_adds_router_accuracy(tmp_path):
    network = RoutedClassifier(_FirstPixelRouter(), {"XR_HAND": _Zero(), "XR_WRIST": _Zero()})
    true_parts = ["XR_HAND", "XR_WRIST", "XR_HAND", "XR_WRIST"]
    routed_to = ["XR_HAND", "XR_WRIST", "XR_WRIST", "XR_WRIST"]  # one hand image sent to the wrist model
    x = torch.zeros(4, 1, 4, 8)
    for i, part in enumerate(routed_to):
        x[i, 0, 0, BODY_PART_INDEX[part]] = 1.0
    batches = [{"image": x[:2], "body_part_index": torch.tensor([BODY_PART_INDEX[p] for p in true_parts[:2]])},
               {"image": x[2:], "body_part_index": torch.tensor([BODY_PART_INDEX[p] for p in true_parts[2:]])}]
    (tmp_path / "metrics.json").write_text(json.dumps({"per_body_part": {}, "study": {"tp": 1}}))
    evaluator = Engine(lambda engine, batch: {"pred": network(batch["image"])})
    writer = RoutingReportWriter(network, tmp_path)
    writer.attach(evaluator)
    evaluator.run(batches, max_epochs=1)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["study"] == {"tp": 1}  # what MetricsReportWriter wrote stays
    assert doc["routing"]["router_accuracy"] == pytest.approx(0.75) and doc["routing"]["n_images"] == 4
    matrix = doc["routing"]["confusion"]["matrix"]
    assert matrix[BODY_PART_INDEX["XR_HAND"]][BODY_PART_INDEX["XR_WRIST"]] == 1
    assert matrix[BODY_PART_INDEX["XR_WRIST"]][BODY_PART_INDEX["XR_WRIST"]] == 2
    assert "Router (bone detector) accuracy: 0.750 on 4 images." in (tmp_path / "patel_et_al_table.md").read_text()
