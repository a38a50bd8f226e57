"""Runs a bundle the way users do: `python -m monai.bundle run ...` from its folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
TRAIN = "configs/train.json"
EVALUATE = "['configs/train.json','configs/evaluate.json']"
METRIC_KEYS = {"auc", "kappa", "accuracy", "sensitivity", "specificity", "precision", "f1", "tp", "fp", "tn", "fn", "threshold"}


def bundle_run(bundle: str | Path, run_id: str, configs: str, *overrides: str, launcher: list[str] | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``run_id`` of a bundle in a subprocess; fails the test with the output's tail on a non-zero exit."""
    return monai_bundle(bundle, "run", run_id, "--meta_file", "configs/metadata.json", "--config_file", configs,
                        *overrides, launcher=launcher, timeout=timeout)


def monai_bundle(bundle: str | Path, *args: str, launcher: list[str] | None = None,
                 timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` from the bundle's folder (any of MONAI's bundle commands);
    fails the test with the output's tail on a non-zero exit."""
    bundle = BUNDLES / bundle if not Path(bundle).is_absolute() else Path(bundle)
    cmd = [*(launcher or [sys.executable, "-m"]), "monai.bundle", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def assert_design_metrics(doc: dict, root: Path) -> None:
    """metrics.json has the shape docs/formats.md gives and counts every valid study of the root once."""
    assert METRIC_KEYS <= set(doc["study"]) and METRIC_KEYS <= set(doc["image"])
    assert doc["per_body_part"] and all(METRIC_KEYS <= set(b) for b in doc["per_body_part"].values())
    valid_studies = (root / "MURA-v1.1" / "valid_labeled_studies.csv").read_text().strip().splitlines()
    assert doc["n_studies"] == len(valid_studies)
    assert doc["study"]["tp"] + doc["study"]["fp"] + doc["study"]["tn"] + doc["study"]["fn"] == doc["n_studies"]


def torchrun(nproc: int) -> list[str]:
    """The launcher of ``torchrun --nproc_per_node=N -m``, from this interpreter's environment."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]


def torchrun_nodes(nnodes: int, node_rank: int, rdzv_endpoint: str, rdzv_id: str, nproc: int = 1) -> list[str]:
    """The launcher of one node of ``torchrun --nnodes N`` with a c10d rendezvous, ending in ``-m``.

    Every node runs the same line (same ``--rdzv_id`` and ``--rdzv_endpoint``). c10d numbers the
    nodes itself (sorting them by address, then launcher pid), so ``node_rank`` is not passed to
    torchrun (``--node_rank`` is the static backend's). It only says which launcher hosts the
    rendezvous store: node 0, with ``is_host=true``; torch would otherwise guess from the
    endpoint's address, and with every node on this machine's loopback address each would try
    to host it. ``--local_addr`` is the endpoint's host (all nodes are this machine here), so
    the worker group's master address is reachable whatever the hostname resolves to.
    """
    host = rdzv_endpoint.rsplit(":", 1)[0]
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}",
            f"--rdzv_conf=is_host={'true' if node_rank == 0 else 'false'}", f"--local_addr={host}",
            "--max_restarts=0", "-m"]


MULTI_GPU = "['configs/train.json','configs/multi_gpu_train.json']"


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """One intra-op thread here and in bundle subprocesses: on the shared 2-core machine two
    competing threads make the convolution passes several times slower (torchrun sets 1 itself)."""
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Imported by a bundle's test module: its tests and subprocesses run one intra-op thread."""
    with one_intra_op_thread():
        yield


def assert_infer_matches_evaluation(bundle: str, ckpt: Path, root: Path, evaluated: Path, work: Path) -> dict:
    """`mura-monai infer` on the root's first valid study gives each image the probability the
    bundle's evaluation gave it; returns the inferred study."""
    import pytest

    from mura_monai.cli import main as cli_main

    study = sorted((root / "MURA-v1.1" / "valid").glob("XR_*/patient*/study*"))[0]
    out = work / "infer.json"
    assert cli_main(["infer", "--bundle", str(BUNDLES / bundle), "--models-dir", str(ckpt), str(study),
                     "--output", str(out)]) == 0
    (result,) = json.loads(out.read_text())["studies"]
    assert len(result["images"]) == len(list(study.glob("*.png")))
    evaluated_images = {r["path"]: r["probability"] for r in read_json(evaluated / "predictions.json")["images"]}
    for image in result["images"]:
        assert image["probability"] == pytest.approx(evaluated_images[image["path"]], abs=1e-5)
    return result


def assert_evaluation_reproduces_training(ckpt: Path, metrics: dict) -> float:
    """`run evaluating` on the model.pt training left scores the best validation study AUC that
    training recorded: same split, same settings, same weights. A model.pt that is not the
    validated one (a cut-short staged run, the last instead of the best epoch) fails here."""
    summary = read_json(Path(ckpt) / "training_summary.json")
    logged = summary.get("best_metric", summary.get("val_study_auc"))
    assert logged is not None, f"training recorded no validation study AUC: {sorted(summary)}"
    assert metrics["study"]["auc"] == pytest.approx(float(logged), abs=1e-6)
    return float(logged)


def assert_members_reproduce_training(bundle: str, ckpt: Path, **overrides) -> dict:
    """Each member of a joined ``model.pt`` (the router pipeline's router and part models) scores,
    on its own validation split through the bundle's own validator, the best validation metric
    its training recorded. The routed whole was never validated while training, so this is the
    one check that the deployed weights are the validated ones. Returns ``{member: metric}``."""
    import torch
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedEvaluator

    joined = torch.load(Path(ckpt) / "model.pt", map_location="cpu", weights_only=True)
    reproduced = {}
    for member, summary in read_json(Path(ckpt) / "training_summary.json")["models"].items():
        parser = ConfigParser()
        parser.read_meta(str(BUNDLES / bundle / "configs" / "metadata.json"))
        parser.read_config(str(BUNDLES / bundle / TRAIN))
        parser.update({"bundle_root": str(BUNDLES / bundle), "ckpt_dir": str(ckpt), "target": member, "device": "cpu",
                       "num_workers": 0, **overrides})
        network = parser.get_parsed_content("network_def")
        prefix = "router." if member == "router" else f"parts.{member}."
        network.load_state_dict({k[len(prefix):]: v for k, v in joined.items() if k.startswith(prefix)})
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"), val_data_loader=parser.get_parsed_content("validate#dataloader"),
            network=network, key_val_metric=parser.get_parsed_content("validate#key_metric"),
            prepare_batch=parser.get_parsed_content("validate#prepare_batch"), decollate=False)
        evaluator.run()
        reproduced[member] = evaluator.state.metrics[evaluator.state.key_metric_name]
        # a toy part whose held-out images are all of one class has no AUC: NaN then, and NaN now
        assert reproduced[member] == pytest.approx(float(summary["best_metric"]), abs=1e-6, nan_ok=True), member
    assert any(m == m for m in reproduced.values()), f"no member had a validation metric to reproduce: {reproduced}"
    return reproduced


def valid_images(root: Path, n: int = 2) -> list[Path]:
    """The first ``n`` radiographs of the root's valid split: real inputs for an export's checks."""
    return sorted((Path(root) / "MURA-v1.1" / "valid").glob("XR_*/patient*/study*/*.png"))[:n]


def export_copy(bundle: str, ckpt: Path, root: Path, dest: Path, images: list[Path] | None = None) -> Path:
    """``export_bundle`` on a copy of a trained checkpoint folder, validated on real radiographs
    (``images``, by default the first two of the valid split); returns the copy. A copy, so that
    the module's other tests keep scoring with torch (a validated export beside model.pt makes
    ``backend: auto`` pick ONNX Runtime)."""
    import shutil

    from mura_monai.export import export_bundle

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "model_settings.json", "routing.json"):  # routing.json: the router's parts
        if (Path(ckpt) / name).is_file():
            shutil.copy(Path(ckpt) / name, dest / name)
    export_bundle(BUNDLES / bundle, dest, images=images or valid_images(root))
    return dest


def assert_exports_agree(bundle: str, models: Path, root: Path, images: list[Path] | None = None,
                         predictors: dict | None = None) -> dict:
    """What ``export.json`` claims holds: both formats validated against this model.pt within
    1e-4, each file (a hybrid's every part file) the one validated, each ONNX file at the
    recorded opset with an open batch dimension on every input and output; and scoring real
    radiographs (``images``, by default the first two of the valid split) through
    ``BundlePredictor`` gives the torch backend's probabilities on TorchScript and on ONNX
    Runtime (a hybrid's through its parts), which ``auto`` then picks. Returns the record; the
    predictors by backend go into ``predictors`` when given."""
    import onnx
    import torch

    from mura_monai.backends import HybridRunner, choose_backend
    from mura_monai.export import EXPORT_FORMATS, OPSET, entry_files, file_sha256, read_export_record
    from mura_monai.inference import BundlePredictor

    record = read_export_record(models)
    assert record is not None and record["checkpoint"]["sha256"] == file_sha256(Path(models) / "model.pt")
    for fmt in EXPORT_FORMATS:
        entry = record["formats"][fmt]
        assert entry["validated"] is True and 0.0 <= entry["max_abs_diff"] <= 1e-4, (fmt, entry)
        for file in entry.get("parts", {"": entry}).values():
            assert file["sha256"] == file_sha256(Path(models) / file["file"])
    for file in entry_files(record["formats"]["onnx"]):
        graph = onnx.load(str(Path(models) / file), load_external_data=False)
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
        for end in (*graph.graph.input, *graph.graph.output):  # a batch dimension frozen by the example would be a number
            assert end.type.tensor_type.shape.dim[0].dim_param == "batch", (file, end)
    for file in record["formats"]["onnx"].get("parts", {"": record["formats"]["onnx"]}).values():
        assert file["opset"] == OPSET and file["dynamic_batch"] is True
    images = images or valid_images(root)
    probabilities = {}
    for backend in ("torch", "torchscript", "onnxruntime"):
        predictor = BundlePredictor(BUNDLES / bundle, device="cpu", models_dir=models, backend=backend)
        assert predictor.backend.name == backend
        if backend != "torch":
            assert isinstance(predictor.runner, HybridRunner) == ("hybrid" in record)
        probabilities[backend] = [r["probability"] for r in predictor.predict_images(images)]
        if predictors is not None:
            predictors[backend] = predictor
    assert len(probabilities["torch"]) == len(images) >= 2
    assert probabilities["torchscript"] == pytest.approx(probabilities["torch"], abs=1e-4)
    assert probabilities["onnxruntime"] == pytest.approx(probabilities["torch"], abs=1e-4)
    auto = choose_backend("auto", models, torch.device("cpu"), predictor.loaded.network)
    assert (auto.name, auto.reason) == ("onnxruntime", "fastest validated")
    return record


def assert_changed_part_falls_back_to_torch(bundle: str, models: Path, dest: Path, part: str) -> str:
    """A hybrid export whose ``part`` ONNX file changed after its validation (and without its
    TorchScript files): ``auto`` scores with torch and says why, and ONNX Runtime asked for by
    name is refused. Returns the reason."""
    import shutil

    import torch

    from mura_monai.backends import BackendError, choose_backend
    from mura_monai.inference import BundlePredictor

    dest.mkdir(parents=True)
    changed = f"model.{part}.onnx"
    for file in Path(models).iterdir():
        if file.name != changed and not file.name.endswith(".ts"):
            (dest / file.name).symlink_to(file)
    shutil.copyfile(Path(models) / changed, dest / changed)
    with open(dest / changed, "ab") as graph:
        graph.write(b"\0")
    predictor = BundlePredictor(BUNDLES / bundle, device="cpu", models_dir=dest)
    reason = predictor.backend.reason
    assert predictor.backend.name == "torch" and f"onnxruntime: {changed} changed after its validation" in reason
    assert "torchscript: no " in reason
    with pytest.raises(BackendError, match=f"backend onnxruntime cannot run: {changed} changed after its validation"):
        choose_backend("onnxruntime", dest, torch.device("cpu"), predictor.loaded.network)
    return reason
