"""resnet50, vgg19 and efficientnet_b0_router through MONAI's bundle CLI, as a researcher runs them.

Each bundle trains (1 epoch, 64 px, random initialisation), evaluates to metrics.json, scores
a study through `mura-monai infer`, and trains under torchrun with 2 CPU processes (gloo).
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch

from mura_monai.cli import main as cli_main
from mura_monai.constants import BODY_PARTS
from tests.bundles.bundle_runner import (
    BUNDLES,
    EVALUATE,
    MULTI_GPU,
    TRAIN,
    assert_changed_part_falls_back_to_torch,
    assert_design_metrics,
    assert_evaluation_reproduces_training,
    assert_exports_agree,
    assert_members_reproduce_training,
    bundle_run,
    export_copy,
    monai_bundle,
    read_json,
    torchrun,
    valid_images,
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


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained bundle exported once, into a copy of its checkpoint folder."""
    return export_copy(trained["name"], trained["ckpt"], trained["root"], tmp_path_factory.mktemp("exported") / "models")


@pytest.mark.parametrize("trained", ["resnet50", "vgg19"], indirect=True)
def test_export_validates_and_every_backend_scores_as_torch(trained, exported):
    assert_exports_agree(trained["name"], exported, trained["root"])


@pytest.fixture(scope="module")
def two_parts(trained, tmp_path_factory):
    """The trained router pipeline cut to the router and its first two part models, as after
    training with ``--body_parts``, exported in parts by `mura-monai export` and validated on
    three valid radiographs. Each part model's ONNX export takes torch's dynamo exporter about
    7 s on one core: the test keeps two of the seven."""
    name, ckpt = trained["name"], trained["ckpt"]
    images = valid_images(trained["root"], 3)
    manifest = read_json(ckpt / "routing.json")
    parts = manifest["parts"][:2]
    models = tmp_path_factory.mktemp("two_parts") / "models"
    models.mkdir()
    keep = ("router.", *(f"parts.{part}." for part in parts))
    state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in state.items() if k.startswith(keep)}, models / "model.pt")
    (models / "routing.json").write_text(json.dumps({**manifest, "parts": parts}))
    shutil.copy(ckpt / "model_settings.json", models)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli_main(["export", "--bundle", str(BUNDLES / name), "--models-dir", str(models),
                         "--images", *map(str, images)]) == 0
    return {"models": models, "parts": parts, "images": images, "out": out.getvalue()}


@pytest.mark.parametrize("trained", ["efficientnet_b0_router"], indirect=True)
def test_router_pipeline_exports_in_parts_and_every_backend_scores_as_torch(trained, two_parts):
    """The router and each part model are exported one file each; the routing and the scatter of
    each part's logits back to its images run the network's own code on the exported router."""
    models, parts = two_parts["models"], two_parts["parts"]
    predictors: dict = {}
    record = assert_exports_agree(trained["name"], models, trained["root"], images=two_parts["images"],
                                  predictors=predictors)
    names = ["router", *(p.removeprefix("XR_").lower() for p in parts)]
    assert record["hybrid"] == {"network": "RoutedClassifier", "parts": ["router", *parts]}
    assert record["batch_sizes"] == [3, 1]
    assert [e["file"] for e in record["formats"]["onnx"]["parts"].values()] == [f"model.{n}.onnx" for n in names]
    assert [e["file"] for e in record["formats"]["torchscript"]["parts"].values()] == [f"model.{n}.ts" for n in names]
    # the routing and the scatter around the exported files: the router of this one-epoch
    # fixture answers alike for every image, so a steered router sends the batch apart
    predictor = predictors["onnxruntime"]
    network = predictor.loaded.network
    x = torch.stack([predictor.prepare(predictor.load(p)) for p in two_parts["images"]])
    routes = [BODY_PARTS.index(parts[i % 2]) for i in range(len(x))]
    steered = torch.full((len(x), len(BODY_PARTS)), -10.0)
    steered[range(len(x)), routes] = 10.0
    exported = {**predictor.runner.parts, "router": lambda images: steered}
    eager = {**{n: part.module for n, part in network.hybrid_parts().items()}, "router": lambda images: steered}
    with torch.no_grad():
        expected = network.hybrid_forward(x, eager)
        network.last_route = None
        got = network.hybrid_forward(x, exported)
    assert network.last_route.tolist() == routes  # what the evaluation's router accuracy reads, either way
    assert torch.allclose(got, expected, atol=1e-6) and bool(got[0] != got[1])  # each image its own part's logit
    network.last_route = None
    predictor.runner(x)  # the real exported router's choice, kept where the evaluation reads it
    assert network.last_route is not None and set(network.last_route.tolist()) <= {BODY_PARTS.index(p) for p in parts}
    # the export command's table: one row per format, a hybrid's part files in one
    stems = ",".join(names)
    assert _rows(two_parts["out"]) == [(trained["name"], fmt, "yes", str(models / f"model.{{{stems}}}.{suffix}"))
                                       for fmt, suffix in (("torchscript", "ts"), ("onnx", "onnx"))]


@pytest.mark.parametrize("trained", ["efficientnet_b0_router"], indirect=True)
def test_router_pipeline_with_a_changed_part_file_scores_on_torch(trained, two_parts, tmp_path):
    part = two_parts["parts"][1].removeprefix("XR_").lower()
    assert_changed_part_falls_back_to_torch(trained["name"], two_parts["models"], tmp_path / "changed", part)


def _rows(out: str) -> list[tuple[str, ...]]:
    """(bundle, format, validated, file) of each row of the export command's table."""
    lines = out.splitlines()
    assert lines[0].split() == ["bundle", "format", "max", "prob", "diff", "validated", "file"], out
    return [(r[0], r[1], r[3], r[4]) for r in (line.split() for line in lines[1:] if not line.startswith("record: "))]


@pytest.mark.parametrize("trained", ["vgg19"], indirect=True)
def test_export_command_prints_a_row_per_file_and_exits_by_validation(trained, exported, capsys):
    bundle = str(BUNDLES / "vgg19")
    assert cli_main(["export", "--bundle", bundle, "--models-dir", str(exported), "--validate-only"]) == 0
    out = capsys.readouterr().out
    assert _rows(out) == [("vgg19", "torchscript", "yes", str(exported / "model.ts")),
                          ("vgg19", "onnx", "yes", str(exported / "model.onnx"))]
    assert out.splitlines()[-1] == f"record: {exported / 'export.json'}"
    # exporting again, one format: its row only, and the record still holds the other format's validation
    assert cli_main(["export", "--bundle", bundle, "--models-dir", str(exported), "--format", "torchscript"]) == 0
    assert _rows(capsys.readouterr().out) == [("vgg19", "torchscript", "yes", str(exported / "model.ts"))]
    assert set(read_json(exported / "export.json")["formats"]) == {"torchscript", "onnx"}
    # a folder without the files, and an option that does not apply: exit 2, one line naming it
    for args, named in ((["--models-dir", str(trained["ckpt"]), "--validate-only"], str(trained["ckpt"] / "model.ts")),
                        (["--models-dir", str(exported), "--validate-only", "--opset", "17"], "--opset")):
        assert cli_main(["export", "--bundle", bundle, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err
    with pytest.raises(SystemExit) as bad_format:
        cli_main(["export", "--bundle", bundle, "--format", "onnx,tflite"])
    assert bad_format.value.code == 2 and "tflite" in capsys.readouterr().err


@pytest.mark.parametrize("trained", ["vgg19"], indirect=True)
def test_files_made_by_monais_bundle_cli_validate_and_a_retrained_checkpoint_falls_back_to_torch(trained, tmp_path, capsys):
    """The model-zoo way: MONAI's own ckpt_export and onnx_export from the bundle folder, with the
    checkpoint's recorded settings as overrides; `mura-monai export --validate-only` then vouches
    for the files, and only for the model.pt they were made of."""
    from mura_monai.backends import BackendError, choose_backend
    from mura_monai.inference import BundlePredictor

    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.pt", "model_settings.json"):
        shutil.copy(trained["ckpt"] / name, models / name)
    settings = read_json(models / "model_settings.json")
    size = settings["image_size"]
    common = ["network_def", "--ckpt_file", str(models / "model.pt"), "--meta_file", "configs/metadata.json",
              "--config_file", "configs/inference.json", "--use_trace", "True", "--input_shape", f"[2, 1, {size}, {size}]",
              "--image_size", str(size), "--classifier_width", str(settings["classifier_width"])]
    monai_bundle("vgg19", "ckpt_export", *common, "--filepath", str(models / "model.ts"))
    monai_bundle("vgg19", "onnx_export", *common, "--filepath", str(models / "model.onnx"), "--converter_kwargs",
                 "{'input_names': ['image'], 'output_names': ['logits'], 'opset_version': 18, 'dynamo': True, "
                 "'dynamic_shapes': [{0: 'batch'}]}")
    args = ["export", "--bundle", str(BUNDLES / "vgg19"), "--models-dir", str(models), "--validate-only"]
    assert cli_main(args) == 0
    assert [row[2] for row in _rows(capsys.readouterr().out)] == ["yes", "yes"]
    onnx_record = read_json(models / "export.json")["formats"]["onnx"]
    assert onnx_record["opset"] == 18 and onnx_record["dynamic_batch"] is True
    assert choose_backend("auto", models, torch.device("cpu")).name == "onnxruntime"

    # retrained after the export: one weight changed and saved
    state = torch.load(models / "model.pt", weights_only=True)
    bias = [key for key, value in state.items() if key.endswith("bias") and tuple(value.shape) == (1,)][-1]
    state[bias] += 1.0
    torch.save(state, models / "model.pt")
    predictor = BundlePredictor(BUNDLES / "vgg19", device="cpu", models_dir=models)
    assert predictor.backend.name == "torch" and "another model.pt" in predictor.backend.reason
    with pytest.raises(BackendError, match="model.onnx was validated against another model.pt"):
        BundlePredictor(BUNDLES / "vgg19", device="cpu", models_dir=models, backend="onnxruntime")
    # validated again against the new weights, the stale files fail: exit 1, and auto still keeps to torch
    assert cli_main(args) == 1
    assert [row[2] for row in _rows(capsys.readouterr().out)] == ["no", "no"]
    choice = choose_backend("auto", models, torch.device("cpu"), predictor.loaded.network)
    assert choice.name == "torch" and "model.onnx differs from model.pt by" in choice.reason
