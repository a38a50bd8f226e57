"""Every override the README lists for all bundles, on every bundle: it reaches the component it
names, or the run stops at once with one line saying why and what to use instead.

The effect is read off the components MONAI's ConfigParser builds from the bundle's own
train.json with the override applied (the transforms, the trainer, the handlers, the network),
without training; one refusal goes through `python -m monai.bundle run training` to check what a
user sees. Resume and pretrained weights, which only a run can show, are trained and checked in
each bundle's own tests (resume) and tests/networks/test_pretrained.py.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from mura_monai.engines import OverrideRefused
from tests.bundles.bundle_runner import BUNDLES, TRAIN

TRAINED = ["densenet169_wbce", "resnet50", "vgg19", "efficientnet_b0_router", "fusionnet_agcnn", "resnet_svm",
           "siamese_triplet"]
# (bundle, override) -> the fragment of the refusal that names the alternative
REFUSED = {
    ("vgg19", "pooling"): "--pool_size",
    ("fusionnet_agcnn", "early_stop_patience"): "--stage_patience",
    ("resnet_svm", "max_epochs"): "--n_estimators",
    ("resnet_svm", "early_stop_patience"): "one pass",
    ("resnet_svm", "resume"): "run training again",
    ("resnet_svm", "rotate_range"): "unaugmented",
}
# override -> (a value other than the default, how to read its effect off the parsed config)
HONOURED = {
    "image_size": (48, lambda p: p.get_parsed_content("resize_transforms")[0].resizers["image"].spatial_size),
    "batch_size": (3, lambda p: p.get_parsed_content("train#dataloader").batch_size),
    "max_epochs": (7, lambda p: p.get_parsed_content("train#trainer").state.max_epochs),
    "device": ("cpu", lambda p: p.get_parsed_content("torch_device")),
    "enhancement": ("clahe", lambda p: [type(t).__name__ for t in p.get_parsed_content("enhancement_transforms")]),
    "pooling": ("max", lambda p: any(isinstance(m, torch.nn.AdaptiveMaxPool2d)
                                     for m in p.get_parsed_content("network_def").modules())),
    "early_stop_patience": (9, lambda p: p.get_parsed_content("early_stopper").patience),
    "rotate_range": (0.1, lambda p: p.get_parsed_content("augmentation_transforms")[1].rand_rotate.range_x),
    "ckpt_dir": ("CKPT", lambda p: str(p.get_parsed_content("best_model_saver").save_dir if "best_model_saver" in p
                                       else p.get_parsed_content("train#trainer").ckpt_dir)),
    "dataset_dir": ("ROOT", lambda p: p.get_parsed_content("train_datalist")[0]["image"]),
}
EXPECTED = {
    "image_size": lambda v: tuple(v) == (48, 48) if not isinstance(v, int) else v == 48,
    "batch_size": lambda v: v == 3,
    "max_epochs": lambda v: v == 7,
    "device": lambda v: v == torch.device("cpu"),
    "enhancement": lambda v: v == ["Clahed"],
    "pooling": lambda v: v is True,
    "early_stop_patience": lambda v: v == 9,
    "rotate_range": lambda v: tuple(v) == pytest.approx((-0.1, 0.1)),
}


def _parser(bundle: str, root, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_meta(str(BUNDLES / bundle / "configs" / "metadata.json"))
    parser.read_config(str(BUNDLES / bundle / TRAIN))
    parser["bundle_root"] = str(BUNDLES / bundle)
    for key, value in {"dataset_dir": str(root), "num_workers": 0, "image_size": 32, **overrides}.items():
        parser[key] = value
    return parser


def _cases():
    for bundle in TRAINED:
        for override in HONOURED:
            yield bundle, override


@pytest.mark.parametrize("bundle, override", list(_cases()))
def test_each_override_takes_effect_or_is_refused(bundle, override, tiny_mura_root, synth_root, tmp_path):
    value, read = HONOURED[override]
    # the Siamese bundle's P x K batches need two classes of 8 images: the synthetic root has them
    root = synth_root if bundle == "siamese_triplet" else tiny_mura_root
    value = {"CKPT": str(tmp_path / "ckpt"), "ROOT": str(root)}.get(value, value)
    if bundle == "siamese_triplet" and override == "batch_size":
        value = 16  # P = 2 classes x samples_per_class 8; other sizes are refused by its sampler
    parser = _parser(bundle, root, **{override: value, "ckpt_dir": str(tmp_path / "ckpt")})
    if (bundle, override) in REFUSED:
        with pytest.raises(OverrideRefused) as refused:
            parser.get_parsed_content("check_overrides")
        assert refused.value.message.startswith(f"{bundle} does not take --{override}: ")
        assert REFUSED[bundle, override] in refused.value.message and "\n" not in refused.value.message
        return
    parser.get_parsed_content("check_overrides")  # accepted
    try:
        effect = read(parser)
    except KeyError as missing:  # a component the bundle does not have: nothing to honour, so it must refuse
        pytest.fail(f"{bundle} has no component for --{override} ({missing}) and does not refuse it")
    if override == "ckpt_dir":  # the router pipeline keeps each target in a folder of its own under it
        assert effect in (str(tmp_path / "ckpt"), str(tmp_path / "ckpt" / "router"))
    elif override == "dataset_dir":
        assert effect.startswith(str(root))
    elif override == "batch_size":
        assert effect == value
    else:
        assert EXPECTED[override](effect), (bundle, override, effect)


@pytest.mark.parametrize("override, value", [("enhancement", "sharpen"), ("device", "gpu"), ("image_size", 0),
                                             ("pooling", "mean"), ("batch_size", 0),
                                             ("pretrained_path", "/no/such/weights.pt")])
@pytest.mark.parametrize("bundle", ["densenet169_wbce", "siamese_triplet"])
def test_invalid_values_are_refused_with_what_to_give(bundle, override, value, tiny_mura_root):
    parser = _parser(bundle, tiny_mura_root, **{override: value})
    with pytest.raises(OverrideRefused) as refused:
        parser.get_parsed_content("check_overrides")
    assert refused.value.message.startswith(f"{bundle}: --{override} {value!r} is not valid: give ")


def test_a_refused_override_stops_the_bundle_cli_with_one_line(tiny_mura_root, tmp_path):
    """What a user sees: exit status 1 and the reason as the last line, before anything trains."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", "configs/metadata.json",
         "--config_file", TRAIN, "--dataset_dir", str(tiny_mura_root), "--ckpt_dir", str(tmp_path / "ckpt"),
         "--pooling", "max"], cwd=BUNDLES / "vgg19", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("vgg19 does not take --pooling: ")
    assert not (tmp_path / "ckpt" / "model.pt").exists()
