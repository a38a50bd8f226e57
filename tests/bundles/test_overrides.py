"""Every override the README lists for all bundles, on every bundle: it reaches the component it
names, or the run stops at once with one line saying why and what to use instead.

The effect is read off the components MONAI's ConfigParser builds from the bundle's own
train.json with the override applied (the transforms, the trainer, the handlers, the network),
without training; one refusal goes through `python -m monai.bundle run training` to check what a
user sees. Resume and pretrained weights, which only a run can show, are trained and checked in
each bundle's own tests (resume) and tests/networks/test_pretrained.py and test_weights.py (files, URLs).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from mura_monai.engines import OverrideRefused
from mura_monai.losses import TRIPLET_LOSSES
from mura_monai.networks.agcnn import BACKBONES, LOCAL_INITS, STAGES
from mura_monai.networks.siamese import EMBEDDING_HEADS
from mura_monai.routing import PART_INIT_CHOICES
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
    "output_dir": ("OUT", lambda p: _output_dir(p)),
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


def _output_dir(parser: ConfigParser) -> str:
    """Where the run writes: training's TensorBoard folder, the router target's own folder under
    it, or (resnet_svm, one fitting pass with no curves) the folder `run evaluating` reports to."""
    if "target_output_dir" in parser:
        return str(parser.get_parsed_content("target_output_dir"))
    for i, handler in enumerate(parser["train#handlers"] if "train#handlers" in parser else []):
        if "log_dir" in handler:
            return str(parser.get_parsed_content(f"train#handlers#{i}")._writer.log_dir)
    evaluation = ConfigParser()
    evaluation.read_config([str(BUNDLES / parser["bundle_name"] / f) for f in (TRAIN, "configs/evaluate.json")])
    evaluation.update({k: parser[k] for k in ("bundle_root", "dataset_dir", "output_dir", "ckpt_dir", "num_workers")})
    writers = [h for h in evaluation["validate#handlers"] if h["_target_"].endswith("MetricsReportWriter")]
    return str(evaluation.get_parsed_content(f"validate#handlers#{evaluation['validate#handlers'].index(writers[0])}")
               .output_dir)


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
    value = {"CKPT": str(tmp_path / "ckpt"), "ROOT": str(root), "OUT": str(tmp_path / "out")}.get(value, value)
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
    elif override == "output_dir":  # the router pipeline logs each target in a folder of its own under it
        assert effect in (str(tmp_path / "out"), str(tmp_path / "out" / "router"))
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


def _lr(p):
    return p.get_parsed_content("optimizer").param_groups[0]["lr"]


def _modules(p, kind, component="network_def"):
    return [m for m in p.get_parsed_content(component).modules() if isinstance(m, kind)]


def _trainable_bn(p):
    return any(q.requires_grad for m in _modules(p, torch.nn.modules.batchnorm._BatchNorm) for q in m.parameters())


def _svm(key):
    return lambda p: p.get_parsed_content("train#trainer").svm[key]


DIFFERS = "differs from the default's"  # an effect whose size is the library's to decide
SHARED_WEIGHTS = "_all_parts_model"  # write the all-parts model.pt a body part starts from


# Each bundle's own options from its docs/README.md, given as the command line hands them over
# ("false" arrives as a string): (bundle, override, value, other overrides, reader, expected effect).
# The reader builds the component that should use the value; the expectation differs from the default.
OWN = [
    ("densenet169_wbce", "learning_rate", 0.003, {}, _lr, 0.003),
    ("densenet169_wbce", "metadata", "true", {}, lambda p: type(p.get_parsed_content("network_def")).__name__,
     "MetadataFusionNet"),
    ("densenet169_wbce", "metadata", "false", {}, lambda p: p.get_parsed_content("train#prepare_batch").metadata_key,
     None),
    ("densenet169_wbce", "body_parts", ["XR_WRIST"], {},
     lambda p: {d["body_part"] for d in p.get_parsed_content("train_datalist")}, {"XR_WRIST"}),
    ("resnet50", "learning_rate", 0.003, {}, _lr, 0.003),
    ("resnet50", "body_parts", ["XR_HAND"], {},
     lambda p: {d["body_part"] for d in p.get_parsed_content("train_datalist")}, {"XR_HAND"}),
    ("vgg19", "batch_norm", "false", {"pool_size": 1, "classifier_width": 8},
     lambda p: len(_modules(p, torch.nn.BatchNorm2d)), 0),
    ("vgg19", "classifier_width", 24, {"pool_size": 1},
     lambda p: {m.out_features for m in _modules(p, torch.nn.Linear)}, {24, 1}),
    ("vgg19", "pool_size", 1, {"classifier_width": 8},
     lambda p: [m.output_size for m in _modules(p, torch.nn.AdaptiveAvgPool2d)], [(1, 1)]),
    ("vgg19", "learning_rate", 0.003, {"pool_size": 1, "classifier_width": 8}, _lr, 0.003),
    ("efficientnet_b0_router", "learning_rate", 0.003, {"target": "router"}, _lr, 0.003),
    ("efficientnet_b0_router", "part_learning_rate", 0.002, {"target": "XR_WRIST", "part_init": "pretrained"}, _lr,
     0.002),
    ("efficientnet_b0_router", "target", "XR_WRIST", {},
     lambda p: (Path(p.get_parsed_content("target_ckpt_dir")).name, p.get_parsed_content("is_router")),
     ("XR_WRIST", False)),
    # the freeze applies on top of learnt weights: a body part starting from the all-parts model
    ("efficientnet_b0_router", "trainable_layers", 3, {"target": "XR_WRIST", SHARED_WEIGHTS: True},
     lambda p: sum(1 for m in p.get_parsed_content("network_def").modules()
                   if any(q.requires_grad for q in m.parameters(recurse=False))), lambda n: 0 < n <= 3),
    ("efficientnet_b0_router", "freeze_batchnorm", "false", {"target": "XR_WRIST", SHARED_WEIGHTS: True},
     _trainable_bn, True),
    ("efficientnet_b0_router", "part_init", "pretrained", {}, lambda p: p.get_parsed_content("shared_init"), False),
    ("efficientnet_b0_router", "holdout_fraction", 0.8, {},
     lambda p: len({d["patient"] for d in p.get_parsed_content("train_split")[1]}), DIFFERS),
    ("fusionnet_agcnn", "attention_threshold", 0.5, {}, lambda p: p.get_parsed_content("network_def").threshold, 0.5),
    ("fusionnet_agcnn", "min_crop_fraction", 0.4, {},
     lambda p: p.get_parsed_content("network_def").min_crop_fraction, 0.4),
    ("fusionnet_agcnn", "local_init", "pretrained", {}, lambda p: p.get_parsed_content("network_def").local_init,
     "pretrained"),
    ("fusionnet_agcnn", "backbone", "densenet169", {},  # DenseNet-169's 1664 features, not ResNet-50's 2048
     lambda p: p.get_parsed_content("network_def").global_branch.n_features, 1664),
    ("fusionnet_agcnn", "stage_epochs", {"global": 1, "local": 2, "fusion": 3}, {},
     lambda p: (p.get_parsed_content("staged_training").plan, p.get_parsed_content("train#trainer").state.max_epochs),
     ([("global", 1), ("local", 2), ("fusion", 3)], 6)),
    # --max_epochs spreads over the three stages in their proportions: the fusion stage still runs
    ("fusionnet_agcnn", "max_epochs", 7, {}, lambda p: p.get_parsed_content("staged_training").plan,
     lambda plan: sum(n for _, n in plan) == 7 and [s for s, _ in plan] == list(STAGES)
     and min(n for _, n in plan) >= 1),
    ("fusionnet_agcnn", "stage_patience", 5, {}, lambda p: p.get_parsed_content("staged_training").patience, 5),
    ("fusionnet_agcnn", "learning_rate", 0.003, {}, _lr, 0.003),
    ("resnet_svm", "n_estimators", 4, {}, _svm("n_estimators"), 4),
    ("resnet_svm", "calibration_folds", 3, {}, _svm("calibration_folds"), 3),
    ("resnet_svm", "svm_degree", 2, {}, _svm("degree"), 2),
    ("resnet_svm", "svm_C", 10.0, {}, _svm("C"), 10.0),
    ("resnet_svm", "svm_coef0", 0.0, {}, _svm("coef0"), 0.0),
    ("resnet_svm", "svm_gamma", "auto", {}, _svm("gamma"), "auto"),
    ("resnet_svm", "svm_max_samples", 0.1, {}, _svm("max_samples"), 0.1),
    ("resnet_svm", "svm_max_features", 0.5, {}, _svm("max_features"), 0.5),
    ("resnet_svm", "svm_class_weight", "balanced", {}, _svm("class_weight"), "balanced"),
    ("resnet_svm", "svm_n_jobs", 2, {}, _svm("n_jobs"), 2),
    ("siamese_triplet", "learning_rate", 0.003, {}, _lr, 0.003),
    ("siamese_triplet", "loss_name", "batch_hard", {}, lambda p: type(p.get_parsed_content("loss")).__name__,
     "BatchHardTripletLoss"),
    ("siamese_triplet", "margin", 0.45, {"loss_name": "focal"}, lambda p: p.get_parsed_content("loss").margin, 0.45),
    ("siamese_triplet", "sigma", 0.2, {"loss_name": "focal"}, lambda p: p.get_parsed_content("loss").sigma, 0.2),
    ("siamese_triplet", "scl_lambda", 2.0, {"loss_name": "selectively_contrastive"},
     lambda p: p.get_parsed_content("loss").lambda_, 2.0),
    ("siamese_triplet", "temperature", 0.2, {"loss_name": "selectively_contrastive"},
     lambda p: p.get_parsed_content("loss").temperature, 0.2),
    ("siamese_triplet", "embedding_dim", 64, {}, lambda p: p.get_parsed_content("network_def").head.dim, 64),
    ("siamese_triplet", "head", "knn", {}, lambda p: p.get_parsed_content("network_def").head.method, "knn"),
    ("siamese_triplet", "knn_k", 5, {}, lambda p: p.get_parsed_content("network_def").head.k, 5),
    ("siamese_triplet", "head_C", 0.5, {}, lambda p: p.get_parsed_content("validate#handlers")[0].C, 0.5),
    ("siamese_triplet", "aggregation", "max", {},
     lambda p: p.get_parsed_content("validate#key_metric#val_study_auc").aggregation, "max"),
    ("siamese_triplet", "samples_per_class", 4, {"batch_size": 8},
     lambda p: p.get_parsed_content("train#dataloader").batch_sampler.sampler.m_per_class
     if p.get_parsed_content("train#dataloader").sampler is None else
     p.get_parsed_content("train#dataloader").sampler.m_per_class, 4),
]


@pytest.mark.parametrize("bundle, override, value, others, read, expected", OWN,
                         ids=[f"{b}-{o}-{v}" for b, o, v, *_ in OWN])
def test_each_bundle_option_reaches_its_component(bundle, override, value, others, read, expected, tiny_mura_root,
                                                 synth_root, tmp_path):
    root = synth_root if bundle == "siamese_triplet" else tiny_mura_root
    others = dict(others)
    if others.pop(SHARED_WEIGHTS, False):
        weights = tmp_path / "ckpt" / "all_parts" / "model.pt"
        weights.parent.mkdir(parents=True)
        shared = _parser(bundle, root, ckpt_dir=str(tmp_path / "ckpt"), target="all_parts")
        torch.save(shared.get_parsed_content("network_def").state_dict(), weights)
    parser = _parser(bundle, root, ckpt_dir=str(tmp_path / "ckpt"), **others, **{override: value})
    parser.get_parsed_content("check_overrides")  # accepted
    effect = read(parser)
    if expected is DIFFERS:
        assert effect != read(_parser(bundle, root, ckpt_dir=str(tmp_path / "ckpt"), **others))
    elif callable(expected):
        assert expected(effect), effect
    else:
        assert effect == expected


# (bundle, override, a value no component takes, what the refusal must offer instead)
BAD_VALUES = [
    ("fusionnet_agcnn", "max_epochs", 2, f"at least {len(STAGES)}"),
    ("fusionnet_agcnn", "backbone", "vgg19", ", ".join(BACKBONES)),
    ("fusionnet_agcnn", "local_init", "imagenet", ", ".join(LOCAL_INITS)),
    ("siamese_triplet", "loss_name", "hinge", ", ".join(TRIPLET_LOSSES)),
    ("siamese_triplet", "head", "svm", ", ".join(EMBEDDING_HEADS)),
    ("siamese_triplet", "aggregation", "min", "mean"),
    ("efficientnet_b0_router", "part_init", "imagenet", ", ".join(PART_INIT_CHOICES)),
    ("efficientnet_b0_router", "freeze_batchnorm", "maybe", "true or false"),
    ("vgg19", "batch_norm", "no thanks", "true or false"),
    ("densenet169_wbce", "metadata", "maybe", "true or false"),
    ("resnet50", "skip_missing_images", "sometimes", "true or false"),
    ("resnet_svm", "backbone_ckpt", "/no/such/model.pt", "model.pt"),
]


@pytest.mark.parametrize("bundle, override, value, instead", BAD_VALUES, ids=[f"{b}-{o}" for b, o, *_ in BAD_VALUES])
def test_a_bundle_option_no_component_takes_is_refused_before_anything_loads(bundle, override, value, instead,
                                                                             tiny_mura_root):
    """Without the check these surface later as MONAI's traceback of a failed expression, or (a
    "false" that Python calls truthy, too few epochs for three stages) not at all."""
    parser = _parser(bundle, tiny_mura_root, **{override: value})
    with pytest.raises(OverrideRefused) as refused:
        parser.get_parsed_content("check_overrides")
    message = refused.value.message
    assert message.startswith(f"{bundle}: --{override} {value!r} is ") and instead in message and "\n" not in message
