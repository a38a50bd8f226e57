"""The scoring backends on a real export: which one ``auto`` takes and why, the refusals, and
that torch, TorchScript and ONNX Runtime give the same probabilities wherever the project scores.

One random-weight ResNet-50 at 32 px, the one member of a really fitted ensemble, exported once
for the module with MONAI's exporters (``export_bundle``); every variant of its models folder
is made of links to those files, with the one file a case needs changed.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from mura_monai.backends import (
    BACKENDS,
    BackendError,
    OnnxRuntimeRunner,
    TorchRunner,
    TorchScriptRunner,
    choose_backend,
)
from mura_monai.cli import BACKEND_CHOICES, main
from mura_monai.export import export_bundle
from mura_monai.inference import BundlePredictor
from tests.conftest import write_mura_root
from tests.ensemble_support import REPO, one_member_ensemble

RESNET50 = REPO / "bundles" / "resnet50"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("backends")
    ensemble = one_member_ensemble(write_mura_root(base / "mura"), base)
    models = ensemble["members"] / "resnet50"
    record = export_bundle(RESNET50, models)
    assert all(entry["validated"] for entry in record["formats"].values()), record
    valid = ensemble["root"] / "MURA-v1.1" / "valid"
    return {**ensemble, "models": models, "ensemble_models": ensemble["models"], "base": base,
            "images": sorted(valid.rglob("*.png")), "study": next(valid.rglob("study1_positive"))}


@pytest.fixture(scope="module")
def predictors(exported):
    return {name: BundlePredictor(RESNET50, device="cpu", models_dir=exported["models"], backend=name)
            for name in BACKENDS}


def _variant(exported, name: str, keep=("model.pt", "model.ts", "model.onnx", "export.json", "model_settings.json")) -> Path:
    """A models folder of links to the exported one's files (those in ``keep``)."""
    folder = exported["base"] / name
    folder.mkdir()
    for file in keep:
        (folder / file).symlink_to(exported["models"] / file)
    return folder


def test_auto_takes_onnxruntime_when_its_export_was_validated_against_this_checkpoint(exported):
    choice = choose_backend("auto", exported["models"], CPU)
    assert (choice.name, choice.reason, choice.path) == ("onnxruntime", "fastest validated",
                                                          exported["models"] / "model.onnx")
    predictor = BundlePredictor(RESNET50, device="cpu", models_dir=exported["models"])  # the config's backend: auto
    assert predictor.backend == choice and isinstance(predictor.runner, OnnxRuntimeRunner)
    # on CUDA torch comes first (autocast): no export is looked at, and the reason does not claim one was
    on_cuda = choose_backend("auto", exported["models"], torch.device("cuda"))
    assert (on_cuda.name, on_cuda.reason) == ("torch", "fastest on cuda")


def test_auto_falls_back_to_torch_without_the_validation_record(exported):
    models = _variant(exported, "no_record", keep=("model.pt", "model.ts", "model.onnx"))
    choice = choose_backend("auto", models, CPU)
    assert choice.name == "torch"
    assert "onnxruntime: model.onnx was never validated" in choice.reason
    assert "torchscript: model.ts was never validated" in choice.reason


def test_auto_falls_back_to_torch_when_model_pt_changed_after_the_validation(exported):
    models = _variant(exported, "retrained", keep=("model.ts", "model.onnx", "export.json"))
    state = torch.load(exported["models"] / "model.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0  # trained on: the exports hold the old weights
    torch.save(state, models / "model.pt")
    choice = choose_backend("auto", models, CPU)
    assert choice.name == "torch"
    assert "onnxruntime: model.onnx was validated against another model.pt" in choice.reason
    assert "torchscript: model.ts was validated against another model.pt" in choice.reason


def test_auto_passes_over_a_model_onnx_changed_after_its_validation(exported):
    models = _variant(exported, "onnx_changed", keep=("model.pt", "export.json"))
    shutil.copyfile(exported["models"] / "model.onnx", models / "model.onnx")
    with open(models / "model.onnx", "ab") as graph:
        graph.write(b"\0")
    choice = choose_backend("auto", models, CPU)
    assert choice.name == "torch"
    assert "onnxruntime: model.onnx changed after its validation" in choice.reason
    assert f"torchscript: no {models / 'model.ts'}" in choice.reason


def test_a_named_backend_that_cannot_run_is_refused_in_one_line(exported, tmp_path, capsys):
    models = _variant(exported, "torchscript_only", keep=("model.pt", "model.ts", "export.json", "model_settings.json"))
    with pytest.raises(BackendError, match="backend onnxruntime cannot run: no .*model.onnx") as refused:
        choose_backend("onnxruntime", models, CPU)
    assert "\n" not in str(refused.value)
    assert choose_backend("torchscript", models, CPU).name == "torchscript"  # the other export still runs
    code = main(["infer", "--bundle", str(RESNET50), "--models-dir", str(models), "--device", "cpu",
                 "--backend", "onnxruntime", str(exported["study"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mura-monai infer: error: backend onnxruntime cannot run")
    # evaluate's single-bundle path meets it inside MONAI's config parser, which wraps it
    code = main(["evaluate", "--bundle", str(RESNET50), "--models-dir", str(models), "--device", "cpu", "--dataset-dir",
                 str(exported["root"]), "--output-dir", str(tmp_path / "out"), "--backend", "onnxruntime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mura-monai evaluate: error: backend onnxruntime cannot run")


def test_unknown_backends_are_refused_and_every_spelt_out_list_is_the_library_s(exported):
    from listener.config import _BACKENDS

    with pytest.raises(BackendError, match=r"backend must be auto or one of \['torch', 'torchscript', 'onnxruntime'\]"):
        choose_backend("tensorrt", exported["models"], CPU)
    assert BACKEND_CHOICES == _BACKENDS == ("auto", *BACKENDS)
    with pytest.raises(SystemExit) as usage:  # argparse's usage error: exit 2 before anything loads
        main(["infer", "--bundle", str(RESNET50), "--backend", "tensorrt", str(exported["study"])])
    assert usage.value.code == 2


def test_the_three_backends_agree_through_bundle_predictor_forward(exported, predictors):
    runners = {name: type(p.runner) for name, p in predictors.items()}
    assert runners == {"torch": TorchRunner, "torchscript": TorchScriptRunner, "onnxruntime": OnnxRuntimeRunner}
    reference = predictors["torch"]
    batch = [reference.prepare(reference.load(path)) for path in exported["images"]]
    probabilities = {name: p.forward(batch) for name, p in predictors.items()}
    assert len(batch) == 3 and len(set(probabilities["torch"])) == 3
    for name in ("torchscript", "onnxruntime"):
        assert probabilities[name] == pytest.approx(probabilities["torch"], abs=1e-4), name
        assert predictors[name].forward(batch[:1]) == pytest.approx(probabilities["torch"][:1], abs=1e-4)
        # an export of the image alone is refused age and sex rather than scoring without them unseen
        with pytest.raises(ValueError, match="not the patient metadata given"):
            predictors[name].runner(torch.stack(batch), metadata=torch.zeros(len(batch), 4))


def test_infer_records_the_backend_and_the_ensemble_s_backends_agree(exported, tmp_path):
    common = ["infer", "--bundle", str(exported["bundle"]), "--models-dir", str(exported["ensemble_models"]),
              "--members-models-dir", str(exported["members"]), "--device", "cpu", str(exported["study"])]
    docs = {}
    for name in BACKENDS:
        out = tmp_path / f"{name}.json"
        assert main([*common, "--backend", name, "--onnx-threads", "1", "--output", str(out)]) == 0
        docs[name] = json.loads(out.read_text())
        assert docs[name]["ensemble"]["backends"] == {"resnet50": {"name": name, "reason": "asked for"}}
    (study,) = docs["torch"]["studies"]
    assert len(study["images"]) == 2
    for name in ("torchscript", "onnxruntime"):
        (other,) = docs[name]["studies"]
        assert other["probability"] == pytest.approx(study["probability"], abs=1e-4)
        assert [i["members"]["resnet50"] for i in other["images"]] == pytest.approx(
            [i["members"]["resnet50"] for i in study["images"]], abs=1e-4)
    out = tmp_path / "single.json"
    assert main(["infer", "--bundle", str(RESNET50), "--models-dir", str(exported["models"]), "--device", "cpu",
                 "--output", str(out), str(exported["study"])]) == 0
    assert json.loads(out.read_text())["backend"] == {"name": "onnxruntime", "reason": "fastest validated"}


def test_early_view_fusion_says_it_scores_on_the_eager_network(exported, predictors):
    early = BundlePredictor(RESNET50, device="cpu", models_dir=exported["models"], backend="onnxruntime",
                            overrides={"view_fusion": "early_mean"})
    used = early.backend_used()
    assert used["name"] == "torch" and used["reason"].startswith("early_mean view fusion needs the classifier's input")
    assert predictors["onnxruntime"].backend_used() == {"name": "onnxruntime", "reason": "asked for"}


def test_onnx_runtime_takes_the_thread_count_it_is_given(exported):
    path = exported["models"] / "model.onnx"
    two = OnnxRuntimeRunner(path, CPU, threads=2)
    assert two.threads == 2 and two.session.get_session_options().intra_op_num_threads == 2
    assert OnnxRuntimeRunner(path, CPU, threads=0).threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="onnx_threads must be 0"):
        OnnxRuntimeRunner(path, CPU, threads=-1)
    configured = BundlePredictor(RESNET50, device="cpu", models_dir=exported["models"], backend="onnxruntime",
                                 overrides={"onnx_threads": 2})
    assert configured.runner.threads == 2


def test_channels_last_on_a_cpu_converts_the_weights_and_keeps_the_probabilities(exported, predictors):
    reference = predictors["torch"]
    assert reference.runner.amp is False and reference.runner.channels_last is False  # the CPU defaults
    network = BundlePredictor(RESNET50, device="cpu", models_dir=exported["models"], backend="torch").loaded.network
    conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size[0] > 1)
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    runner = TorchRunner(network, CPU, amp=True, channels_last=True)
    assert runner.amp is False  # autocast is for CUDA's tensor cores, never on a CPU
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.stack([reference.prepare(reference.load(path)) for path in exported["images"]])
    assert torch.sigmoid(runner(x)).flatten().tolist() == pytest.approx(
        torch.sigmoid(reference.runner(x)).flatten().tolist(), abs=1e-4)


def test_evaluate_on_onnxruntime_gives_the_figures_of_torch(exported, tmp_path):
    out = {}
    for name in ("torch", "onnxruntime"):
        out[name] = tmp_path / name
        assert main(["evaluate", "--bundle", str(RESNET50), "--models-dir", str(exported["models"]), "--dataset-dir",
                     str(exported["root"]), "--output-dir", str(out[name]), "--device", "cpu", "--n-bootstrap", "0",
                     "--sample-heatmaps", "0", "--backend", name, "--onnx-threads", "1"]) == 0
    metrics = {name: json.loads((folder / "metrics.json").read_text()) for name, folder in out.items()}
    assert metrics["onnxruntime"]["backend"] == {"name": "onnxruntime", "reason": "asked for"}
    assert metrics["torch"]["backend"] == {"name": "torch", "reason": "asked for"}
    assert metrics["onnxruntime"]["study"]["auc"] == pytest.approx(metrics["torch"]["study"]["auc"], abs=1e-4)
    images = {name: {r["path"]: r["probability"] for r in json.loads((folder / "predictions.json").read_text())["images"]}
              for name, folder in out.items()}
    assert len(images["torch"]) == 3 and images["onnxruntime"].keys() == images["torch"].keys()
    for path, probability in images["torch"].items():
        assert images["onnxruntime"][path] == pytest.approx(probability, abs=1e-4)
    # the exported graph hides the classifier's input: the early rules are named as not evaluated, not dropped
    fusion = {name: json.loads((folder / "view_fusion.json").read_text()) for name, folder in out.items()}
    assert {"early_mean", "early_max"} <= set(fusion["torch"]["methods"]) and "not_evaluated" not in fusion["torch"]
    assert not {"early_mean", "early_max"} & set(fusion["onnxruntime"]["methods"])
    assert set(fusion["onnxruntime"]["not_evaluated"]) == {"early_mean", "early_max"}
    assert "--backend torch" in fusion["onnxruntime"]["not_evaluated"]["early_mean"]
    assert fusion["onnxruntime"]["methods"]["mean"]["auc"] == pytest.approx(fusion["torch"]["methods"]["mean"]["auc"])


def test_the_listener_s_worker_loads_its_members_on_the_configured_backend(exported, caplog):
    from listener.config import ListenerConfig, ModelSettings
    from listener.worker import load_predictor

    config = ListenerConfig(model=ModelSettings(
        bundle=str(exported["bundle"]), device="cpu", models_dir=str(exported["ensemble_models"]),
        members_models_dir=str(exported["members"]), backend="onnxruntime", onnx_threads=1))
    with caplog.at_level(logging.INFO, logger="listener.worker"):
        predictor = load_predictor(config)
    (member,) = predictor.members
    assert member.backend.name == "onnxruntime" and member.runner.threads == 1
    (logged,) = [r for r in caplog.records if r.name == "listener.worker"]
    assert logged.getMessage() == "member resnet50 scores with the onnxruntime backend (asked for)"
    assert (logged.member, logged.backend) == ("resnet50", "onnxruntime")
