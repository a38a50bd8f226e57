from __future__ import annotations

import json
from pathlib import Path

import pytest

from mura_monai.cli import main
from tests.conformance.corpus import build_corpus
from tests.ensemble_support import ENSEMBLE, REPO, random_member


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return build_corpus(tmp_path_factory.mktemp("conformance") / "corpus")


@pytest.fixture(scope="session")
def conformance_ensemble(synth_root, tmp_path_factory):
    """The ensemble bundle with one random-weight member (ResNet-50 at 64 px), really fitted.

    One member, not the default two: the corpus runs Grad-CAM on every scored image through
    `infer` and the listener, and DenseNet-169's backward pass was three quarters of that time;
    what the corpus tests is the DICOM path around the networks, which one member exercises
    whole (decoding, grouping, calibration, SR, SC). Shared by `infer` and the listener tests.
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
    assert main(["fit-ensemble", "--bundle", str(bundle), "--dataset-dir", str(synth_root),
                 "--members-models-dir", str(members), "--models-dir", str(models), "--device", "cpu"]) == 0
    return {"bundle": bundle, "members": members, "models": models, "root": Path(synth_root)}
