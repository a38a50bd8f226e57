"""The bundles are copies of one another on purpose (MONAI Deploy and MONAI Label load one bundle
folder alone, so nothing is shared between them); these tests fail when the copies drift apart.

- The blocks the CNN bundles share (transforms, datasets, trainer, evaluator, handlers,
  checkpointing, early stopping, model settings) are compared as raw, unparsed JSON; every
  deliberate difference is recorded below with a one-line why.
- ``model_settings.json`` is written from one ``model_settings`` block per bundle, passed whole.
- ``multi_gpu_train.json`` names the handlers it keeps on each rank (never ``train#handlers#0``
  or ``@train#handlers[:1]``, which silently pick another handler when the list changes).
- Entry points (``initialize``, ``training``, ``run``...) come after all components.

JSON reading only: nothing is parsed by MONAI or trained.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.bundles.bundle_runner import BUNDLES

CNN_BUNDLES = ["resnet50", "densenet169_wbce", "vgg19", "fusionnet_agcnn", "efficientnet_b0_router", "siamese_triplet"]
ALL_TRAINED = [*CNN_BUNDLES, "resnet_svm"]
ENTRY_KEYS = ("initialize", "training", "train_target", "evaluating", "run", "finalize")

# Config paths (ConfigParser ids; ``[Name]`` picks the list item whose ``_target_`` ends with Name)
# whose raw value must be the same in every CNN bundle's train.json, except where DIFFERENT says why.
SHARED = [
    # settings and their defaults
    "bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "in_channels", "learning_rate", "early_stop_patience",
    "rotate_range", "val_interval", "num_workers", "seed", "resume", "device", "torch_device", "amp",
    "pretrained_path", "threshold", "aggregation", "body_parts", "skip_missing_images",
    # data and transforms
    "train_datalist", "val_datalist", "load_transforms", "enhancement_transforms", "resize_transforms",
    "deterministic_transforms", "normalize_transforms", "augmentation_transforms", "preprocessing",
    "train#preprocessing", "train#dataset", "train#dataloader", "validate#dataset", "validate#dataloader",
    # network, loss, optimisation
    "network", "loss", "optimizer", "lr_scheduler",
    # trainer and its handlers
    "train#prepare_batch", "train#inferer", "train#trainer",
    "train#handlers#[ValidationHandler]", "train#handlers#[StatsHandler]",
    "train#handlers#[TensorBoardStatsHandler]", "train#handlers#[TrainingSummaryWriter]#_target_",
    "train#handlers#[TrainingSummaryWriter]#ckpt_dir", "train#handlers#[TrainingSummaryWriter]#network",
    "train#handlers#[TrainingSummaryWriter]#validator", "train#handlers#[TrainingSummaryWriter]#extra#bundle",
    "train#handlers#[TrainingSummaryWriter]#extra#image_size",
    "train#handlers#[TrainingSummaryWriter]#extra#batch_size",
    "train#handlers#[TrainingSummaryWriter]#extra#learning_rate",
    "train#handlers#[TrainingSummaryWriter]#extra#enhancement",
    # evaluator, metric and its handlers
    "validate#inferer", "validate#key_metric", "validate#evaluator#_target_", "validate#evaluator#device",
    "validate#evaluator#val_data_loader", "validate#evaluator#network", "validate#evaluator#inferer",
    "validate#evaluator#key_val_metric", "validate#evaluator#val_handlers", "validate#evaluator#decollate",
    "validate#evaluator#amp", "validate#evaluator#prepare_batch",
    "validate#handlers#[LrScheduleHandler]", "validate#handlers#[StatsHandler]",
    "validate#handlers#[TensorBoardStatsHandler]",
    # checkpointing and early stopping
    "best_model_saver", "early_stopper", "epoch_checkpoint",
    # model settings common to all, and the entry points
    "model_settings#image_size", "model_settings#in_channels", "model_settings#enhancement",
    "model_settings#aggregation", "model_settings#threshold", "model_settings#pooling",
    "initialize", "run", "training",
]

ROUTER = "efficientnet_b0_router"
# path -> {bundle: why its value is deliberately its own}
DIFFERENT = {
    "early_stop_patience": {"fusionnet_agcnn": "null: each of the three stages stops on --stage_patience instead"},
    "train_datalist": {ROUTER: "the target's records from a patient hold-out of the train split"},
    "val_datalist": {ROUTER: "the target's held-out patients of the train split"},
    "load_transforms": {"densenet169_wbce": "adds PatientMetadatad for --metadata (age and sex fusion)"},
    "train#dataloader": {"siamese_triplet": "P x K batches from pk_sampler instead of shuffling"},
    "loss": {ROUTER: "cross-entropy for the 7-way router, weighted BCE for the body parts",
             "siamese_triplet": "metric-learning loss (triplet family)"},
    "optimizer": {ROUTER: "only the trainable layers, at the target's learning rate",
                  "siamese_triplet": "optimises the Embedder wrapper's parameters"},
    "train#prepare_batch": {"densenet169_wbce": "passes the patient metadata with --metadata",
                            ROUTER: "body-part target for the router, label and body part for the parts"},
    "train#trainer": {"siamese_triplet": "trains the Embedder wrapper, not the classifier network"},
    "train#handlers#[TensorBoardStatsHandler]": {ROUTER: "logs to the target's own folder (target_output_dir)"},
    "train#handlers#[TrainingSummaryWriter]#ckpt_dir": {ROUTER: "writes into the target's own folder"},
    "train#handlers#[TrainingSummaryWriter]#extra#learning_rate": {ROUTER: "records the target's learning rate"},
    "validate#key_metric": {ROUTER: "router accuracy for the router, study AUC for the parts"},
    "validate#evaluator#prepare_batch": {
        "densenet169_wbce": "validation passes the patient metadata to the network too",
        "siamese_triplet": "the training target (label, body part) since 5e79e69; StudyAUC reads the batch itself",
        ROUTER: "its own validate#prepare_batch (router or part target)"},
    "validate#handlers#[LrScheduleHandler]": {ROUTER: "steps on the target's key metric, whatever its name"},
    "validate#handlers#[TensorBoardStatsHandler]": {ROUTER: "logs to the target's own folder (target_output_dir)"},
    "best_model_saver": {ROUTER: "saves into the target's own folder"},
    "early_stopper": {"fusionnet_agcnn": "none: StagedTraining stops each stage on its own patience",
                      ROUTER: "stops on the target's key metric, whatever its name"},
    "epoch_checkpoint": {"fusionnet_agcnn": "also saves the StagedTraining state for --resume",
                         ROUTER: "saves into the target's own folder"},
    "model_settings#pooling": {"vgg19": "VGG-19 flattens its feature map: pool_size is recorded instead"},
    "training": {"fusionnet_agcnn": "no early stopper to attach (the stages stop themselves)",
                 ROUTER: "trains every target through mura_monai.routing.train_pipeline (train_target)"},
}

# shared paths whose shared value is to leave them out (MONAI's default then applies)
MAY_BE_ABSENT = {"validate#evaluator#prepare_batch"}

# model_settings keys beyond the shared ones: what a bundle's network needs to be rebuilt
MODEL_SETTINGS_COMMON = {"image_size", "in_channels", "enhancement", "aggregation", "threshold", "pooling"}
MODEL_SETTINGS_EXTRA = {
    "densenet169_wbce": {"metadata"},
    "vgg19": {"batch_norm", "classifier_width", "pool_size"},
    "fusionnet_agcnn": {"backbone", "attention_threshold", "min_crop_fraction", "output_stage"},
    "siamese_triplet": {"backbone", "embedding_dim", "head", "knn_k"},
}
MODEL_SETTINGS_MISSING = {"vgg19": {"pooling"}}

# handler lists: items a bundle adds to, or leaves out of, the shared sequence
HANDLERS_ADDED = {
    ("fusionnet_agcnn", "train#handlers"): {"@staged_training"},
    ("siamese_triplet", "validate#handlers"): {"mura_monai.engines.EmbeddingHeadFitter"},
}
HANDLERS_LEFT_OUT = {("fusionnet_agcnn", "validate#handlers"): {"@early_stopper"}}

_MISSING = object()


def _train(bundle: str) -> dict:
    return json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())


def _get(config, path: str):
    """The raw value at a ConfigParser id; ``[Name]`` selects the list item whose ``_target_`` ends with Name."""
    node = config
    for part in path.split("#"):
        if part.startswith("[") and part.endswith("]"):
            hits = [h for h in node if isinstance(h, dict) and h.get("_target_", "").split(".")[-1] == part[1:-1]]
            if len(hits) != 1:
                return _MISSING
            node = hits[0]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _handler_name(item) -> str:
    return item if isinstance(item, str) else item.get("_target_", "?")


def _config_files(with_metadata: bool = True):
    for path in sorted(BUNDLES.glob("*/configs/*.json")):
        if with_metadata or path.name != "metadata.json":
            yield path


@pytest.mark.parametrize("path", SHARED)
def test_shared_blocks_are_identical(path):
    exempt = DIFFERENT.get(path, {})
    values = {b: _get(_train(b), path) for b in CNN_BUNDLES if b not in exempt}
    reference_bundle = next(iter(values))
    reference = values[reference_bundle]
    assert reference is not _MISSING or path in MAY_BE_ABSENT, f"{reference_bundle} has no {path}"
    drifted = {b: v for b, v in values.items() if v != reference}
    assert not drifted, (f"{path} drifted from {reference_bundle} ({json.dumps(reference)}): "
                         + "; ".join(f"{b}: {json.dumps(v) if v is not _MISSING else 'missing'}"
                                     for b, v in drifted.items())
                         + " - make them equal, or record the difference in DIFFERENT with why")


@pytest.mark.parametrize("path", sorted(DIFFERENT))
def test_recorded_differences_are_real(path):
    """A recorded difference that is no longer one is dropped from DIFFERENT, so the list stays true."""
    assert path in SHARED, f"{path} is recorded as different but not compared (add it to SHARED)"
    exempt = DIFFERENT[path]
    assert all(why.strip() for why in exempt.values())
    shared = [_get(_train(b), path) for b in CNN_BUNDLES if b not in exempt]
    for bundle in exempt:
        assert _get(_train(bundle), path) != shared[0], f"{bundle}'s {path} is the shared one again: drop it from DIFFERENT"


@pytest.mark.parametrize("handlers", ["train#handlers", "validate#handlers"])
def test_handler_lists_hold_the_same_handlers_in_the_same_order(handlers):
    def shared_sequence(bundle):
        names = [_handler_name(h) for h in _get(_train(bundle), handlers)]
        return [n for n in names if n not in HANDLERS_ADDED.get((bundle, handlers), set())]

    reference = shared_sequence(CNN_BUNDLES[0])
    for bundle in CNN_BUNDLES[1:]:
        expected = [n for n in reference if n not in HANDLERS_LEFT_OUT.get((bundle, handlers), set())]
        assert shared_sequence(bundle) == expected, f"{bundle}'s {handlers} drifted from {CNN_BUNDLES[0]}'s"


@pytest.mark.parametrize("bundle", ALL_TRAINED)
def test_model_settings_is_one_block_of_named_settings(bundle):
    settings = _train(bundle).get("model_settings")
    assert isinstance(settings, dict), f"{bundle}: train.json has no model_settings block"
    if bundle in CNN_BUNDLES:
        expected = (MODEL_SETTINGS_COMMON - MODEL_SETTINGS_MISSING.get(bundle, set())) | MODEL_SETTINGS_EXTRA.get(bundle, set())
        assert set(settings) == expected, f"{bundle}: model_settings keys {sorted(settings)} != {sorted(expected)}"
    for key, value in settings.items():
        # each entry is replayed as the override --<key> by evaluate and infer: it records that setting
        assert isinstance(value, str) and re.search(rf"@{re.escape(key)}\b", value), (bundle, key, value)


@pytest.mark.parametrize("path", list(_config_files()), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_save_model_settings_is_called_once_with_the_block(path):
    text = path.read_text()
    calls = re.findall(r"save_model_settings\(([^)]*)\)", text)
    assert len(calls) <= 1, f"{path}: save_model_settings called {len(calls)} times"
    if calls:
        assert calls[0] == "@ckpt_dir, **@model_settings", f"{path}: pass the block, not an argument list: {calls[0]}"
        assert "model_settings" in _train(path.parent.parent.name)


@pytest.mark.parametrize("bundle", ALL_TRAINED)
def test_multi_gpu_train_names_its_handlers(bundle):
    text = (BUNDLES / bundle / "configs" / "multi_gpu_train.json").read_text()
    assert not re.search(r"#\d", text), f"{bundle}: a list-index id (#<digit>) in multi_gpu_train.json"
    assert not re.search(r"@[\w#]*handlers\s*\[", text), f"{bundle}: a handler list indexed or sliced in multi_gpu_train.json"


@pytest.mark.parametrize("name", ["train.json", "multi_gpu_train.json"])
@pytest.mark.parametrize("bundle", ALL_TRAINED)
def test_entry_points_come_last(bundle, name):
    keys = list(json.loads((BUNDLES / bundle / "configs" / name).read_text()))
    if name == "train.json" and "training" in keys:
        assert "run" in keys, f"{bundle}: train.json has training but no run"
    entries = [i for i, k in enumerate(keys) if k in ENTRY_KEYS]
    components = [i for i, k in enumerate(keys) if k not in ENTRY_KEYS]
    assert not entries or not components or min(entries) > max(components), \
        f"{bundle}/{name}: {[keys[i] for i in components if i > min(entries)]} come after an entry point"
    if "run" in keys and name == "train.json":
        assert all(keys.index("run") > i for i in components)


@pytest.mark.parametrize("path", list(_config_files(with_metadata=False)),
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_configs_stay_inside_their_bundle(path):
    """MONAI Deploy and MONAI Label load one bundle folder alone: no config reaches outside it
    (metadata.json, prose only, may name other bundles)."""
    text = path.read_text()
    assert "../" not in text and "bundles/" not in text, f"{path} refers to a file outside its bundle"
