"""A fitted ensemble of real member bundles with random weights, for tests of what runs it.

Members are densenet169_wbce and resnet50 at 64 px, randomly initialised (tests never download
or train for long); the fit is the real `mura-monai fit-ensemble` on a MURA root's valid split.
"""
from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigParser

from mura_monai.cli import main
from mura_monai.model_settings import save_model_settings

REPO = Path(__file__).resolve().parents[1]
ENSEMBLE = REPO / "bundles" / "ensemble"
MEMBER_SETTINGS = {"densenet169_wbce": {"image_size": 64}, "resnet50": {"image_size": 64}}


def random_member(name: str, models_dir: Path, seed: int) -> None:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "inference.json"))
    parser["bundle_root"] = str(REPO / "bundles" / name)
    parser["device"] = "cpu"
    for key, value in MEMBER_SETTINGS[name].items():
        parser[key] = value
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), models_dir / "model.pt")
    save_model_settings(models_dir, **MEMBER_SETTINGS[name])


def fitted_ensemble(mura_root: Path, base: Path) -> dict:
    """Members' checkpoints under ``base/members`` and ``base/models/ensemble.json``."""
    members = base / "members"
    for seed, name in enumerate(MEMBER_SETTINGS):
        random_member(name, members / name, seed)
    models = base / "models"
    rc = main(["fit-ensemble", "--bundle", str(ENSEMBLE), "--dataset-dir", str(mura_root),
               "--members-models-dir", str(members), "--models-dir", str(models), "--device", "cpu"])
    if rc != 0:
        raise RuntimeError("fit-ensemble failed")
    return {"members": members, "models": models, "root": mura_root, "base": base}


def one_member_ensemble(mura_root: Path, base: Path) -> dict:
    """The ensemble bundle with one random-weight member (ResNet-50 at 32 px), really fitted: for
    tests of the DICOM path around the networks (decoding, grouping, calibration, SR, SC), which
    one small member exercises whole at a fraction of the default two members' Grad-CAM time."""
    import json

    bundle = base / "bundle"
    (bundle / "configs").mkdir(parents=True)
    config = json.loads((ENSEMBLE / "configs" / "inference.json").read_text())
    config["members"] = [{"name": "resnet50", "weight": 1.0, "bundle": str(REPO / "bundles" / "resnet50")}]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (bundle / "configs" / "metadata.json").write_text((ENSEMBLE / "configs" / "metadata.json").read_text())
    members, models = base / "members", base / "models"
    random_member("resnet50", members / "resnet50", seed=0)
    save_model_settings(members / "resnet50", image_size=32)  # the weights do not depend on the size
    rc = main(["fit-ensemble", "--bundle", str(bundle), "--dataset-dir", str(mura_root),
               "--members-models-dir", str(members), "--models-dir", str(models), "--device", "cpu"])
    if rc != 0:
        raise RuntimeError("fit-ensemble failed")
    return {"bundle": bundle, "members": members, "models": models, "root": Path(mura_root)}
