from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mura_monai.cli import main
from mura_monai.model_settings import save_model_settings
from tests.conformance.corpus import build_corpus
from tests.ensemble_support import ENSEMBLE, REPO, random_member


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return build_corpus(tmp_path_factory.mktemp("conformance") / "corpus")


@pytest.fixture(scope="session")
def conformance_ensemble(synth_root, tmp_path_factory):
    """The ensemble bundle with one random-weight member (ResNet-50 at 32 px), really fitted.

    One member, not the default two: the corpus runs Grad-CAM on every scored image through
    `infer`, and DenseNet-169's backward pass was three quarters of that time;
    what the corpus tests is the DICOM path around the networks, which one member exercises
    whole (decoding, grouping, calibration, SR, SC). (The listener's pass over the corpus is in
    tests/listener/test_clients.py, beside the other clients.)
    """
    base = tmp_path_factory.mktemp("conformance_ensemble")
    bundle = base / "bundle"
    (bundle / "configs").mkdir(parents=True)
    config = json.loads((ENSEMBLE / "configs" / "inference.json").read_text())
    config["members"] = [{"name": "resnet50", "weight": 1.0, "bundle": str(REPO / "bundles" / "resnet50")}]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (bundle / "configs" / "metadata.json").write_text((ENSEMBLE / "configs" / "metadata.json").read_text())
    members, models = base / "members", base / "models"
    random_member("resnet50", members / "resnet50", seed=0)
    save_model_settings(members / "resnet50", image_size=32)  # the weights do not depend on the size
    assert main(["fit-ensemble", "--bundle", str(bundle), "--dataset-dir", str(synth_root),
                 "--members-models-dir", str(members), "--models-dir", str(models), "--device", "cpu"]) == 0
    return {"bundle": bundle, "members": members, "models": models, "root": Path(synth_root)}


@pytest.fixture
def one_torch_thread(monkeypatch):
    """Torch on one thread, here and in the processes a test starts: the suite shares 2 cores
    with other work, and OpenMP threads spinning for a busy core made `infer` on the corpus
    8x slower (136 s against 16 s measured); the corpus tests the DICOM path, not throughput."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
