"""Patel et al.'s pipeline in bundle form: train the body-part router, then one model per part.

``bundles/efficientnet_b0_router`` describes *one* EfficientNet-B0 training in its config,
parameterised by ``target`` (``"router"`` or a body part). ``train_pipeline`` runs that config
once per target through MONAI's ``ConfigWorkflow`` (so each model has the checkpointing,
early stopping, resume and summary of every other bundle) and then joins the checkpoints into
one ``RoutedClassifier`` state dict, ``model.pt``, that evaluation and inference load like any
single-network bundle's.

Patel et al. fine-tune every model from ImageNet weights. Offline there may be none, and a part model
trained from scratch on one body part's few images does not leave chance (measured: study AUC
0.53 on a 300-patient synthetic root, while the same images pooled teach DenseNet-169 and
ResNet-50). So, by default when no ``pretrained_path`` is given, the pipeline first trains one
abnormality model on all parts (target ``"all_parts"``) and fine-tunes each part model from it
with the paper's freeze: the in-domain stand-in for the ImageNet start.

Reference: Patel K., Patel V., Patel S., Patel D., "Deep Learning For Abnormalities Detection in
Musculoskeletal Radiographs".
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from sklearn.metrics import accuracy_score, confusion_matrix
from torch import nn

from mura_monai.constants import BODY_PARTS
from mura_monai.data.splits import select_body_part
from mura_monai.engines.checkpoints import BEST_MODEL_FILE
from mura_monai.engines.distributed import is_main_process
from mura_monai.engines.training_summary import SUMMARY_FILE, read_training_summary
from mura_monai.networks.factory import efficientnet_b0
from mura_monai.networks.freeze import freeze_all_but_last
from mura_monai.networks.routed import RoutedClassifier
from mura_monai.report import format_patel_et_al_table

__all__ = [
    "ROUTER", "SHARED", "WHOLE_SET_TARGETS", "MANIFEST_FILE", "PART_INIT_CHOICES", "RoutingReportWriter", "transfer_network",
    "uses_shared_init",
    "initial_weights", "target_records", "trainable_targets", "validation_records", "train_pipeline",
    "combine_checkpoints", "build_routed_classifier",
]

logger = logging.getLogger(__name__)

ROUTER = "router"
SHARED = "all_parts"
# the targets trained on every part's images; the others are one body part each
WHOLE_SET_TARGETS = (ROUTER, SHARED)
MANIFEST_FILE = "routing.json"
PART_INIT_CHOICES = ("auto", "shared", "pretrained")


def transfer_network(out_channels: int, in_channels: int = 1, pretrained_path: str | None = None,
                     trainable_layers: int | None = 20, freeze_batchnorm: bool = True, pooling: str = "avg") -> nn.Module:
    """EfficientNet-B0 with Patel et al.'s transfer-learning freeze when pretrained weights are given.

    Freezing only makes sense on top of learnt weights: from random initialisation every layer
    trains (logged), since frozen random filters would cripple the model.
    """
    net = efficientnet_b0(in_channels=in_channels, out_channels=out_channels, pretrained_path=pretrained_path or None,
                          pooling=pooling)
    if pretrained_path:
        return freeze_all_but_last(net, trainable_layers, freeze_batchnorm=freeze_batchnorm)
    logger.info("no pretrained weights: training all layers of EfficientNet-B0 (the freeze applies to transfer learning)")
    return net


def uses_shared_init(part_init: str, pretrained_path: str | None) -> bool:
    """Whether part models start from the all-parts model.

    ``"shared"``: always; ``"pretrained"``: never (from ``pretrained_path``, or from scratch
    without one); ``"auto"``: only when there is no ``pretrained_path``, so that with ImageNet
    weights the pipeline is Patel et al.'s as published.
    """
    if part_init not in PART_INIT_CHOICES:
        raise ValueError(f"part_init must be one of {PART_INIT_CHOICES}, got {part_init!r}")
    return part_init == "shared" or (part_init == "auto" and not pretrained_path)


def initial_weights(target: str, pretrained_path: str | None, shared_init: bool, ckpt_dir: str | Path) -> str:
    """The weights file ``target``'s network starts from: the all-parts model's best checkpoint
    for a body part under shared initialisation, else ``pretrained_path`` (``""``: random)."""
    if shared_init and target not in WHOLE_SET_TARGETS:
        path = Path(ckpt_dir) / SHARED / BEST_MODEL_FILE
        if not path.is_file():
            # under torchrun only global rank 0 writes checkpoints: on another node the file is
            # there only when --ckpt_dir is a directory the nodes share
            several = torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1
            raise FileNotFoundError(f"{target} starts from the all-parts model, but {path} is missing: "
                                    f"train --target {SHARED} first, or pass --part_init pretrained"
                                    + ("; on several nodes --ckpt_dir must be a directory every node shares"
                                       if several else ""))
        return str(path)
    return pretrained_path or ""


def target_records(records: list[dict], target: str) -> list[dict]:
    """The records ``target`` trains on: every image for the router and the all-parts model, else one part's."""
    return list(records) if target in WHOLE_SET_TARGETS else select_body_part(records, target)


def trainable_targets(train_records: list[dict], body_parts: list[str] | None = None, shared_init: bool = False) -> list[str]:
    """``"router"``, ``"all_parts"`` when the parts start from it, then every body part with
    training images (restricted to ``body_parts``), in training order."""
    present = {r["body_part"] for r in train_records}
    wanted = body_parts or list(BODY_PARTS)
    missing = [p for p in wanted if p not in present]
    if missing:
        logger.warning("no training images for %s: no model for them, the router will not send images there", missing)
    parts = [p for p in BODY_PARTS if p in wanted and p in present]
    if not parts:
        raise ValueError("no body part has training images; check --dataset_dir and --body_parts")
    return [ROUTER, *([SHARED] if shared_init else []), *parts]


def validation_records(train_split: tuple[list[dict], list[dict]], target: str) -> list[dict]:
    """The held-out images of ``target``; a part with a single training patient has none, and is
    then validated on its training images (said in the log: its checkpoint choice means little)."""
    held_out = target_records(train_split[1], target)
    if held_out:
        return held_out
    logger.warning("%s: no held-out patient (too few patients); validating on its training images", target)
    return target_records(train_split[0], target)


def train_pipeline(bundle_root: str | Path, config_files: str | list[str], targets: list[str], overrides: dict,
                   ckpt_dir: str | Path, run_id: str = "train_target") -> dict:
    """Train every target with the bundle's own config, then write the joined ``model.pt``.

    Args:
        bundle_root: the bundle folder (its ``configs/`` are read).
        config_files: the config file(s), relative to ``bundle_root`` (train.json, and
            multi_gpu_train.json under torchrun).
        targets: ``"router"``, ``"all_parts"`` and body parts, trained in this order (the
            all-parts model only initialises the parts: it is not in the joined model).
        overrides: config values forwarded to every target's workflow (dataset, sizes, epochs...).
        ckpt_dir: where each target's folder and the joined checkpoint go.
    """
    root = Path(bundle_root).resolve()
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    for number, target in enumerate(targets, start=1):
        logger.info("=== training %s (%d/%d)", target, number, len(targets))
        workflow = ConfigWorkflow(
            config_file=[str(root / f) for f in files], meta_file=str(root / "configs" / "metadata.json"),
            run_id=run_id, **{**overrides, "bundle_root": str(root), "target": target},
        )
        workflow.initialize()
        workflow.run()  # no finalize: under torchrun it would leave the process group the next target needs
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # rank 0 writes the checkpoints after the others finish: a part model must not look
            # for the all-parts model (nor the join for any model) before it is on disk
            torch.distributed.barrier()
    if not is_main_process():
        # global rank 0 joins the checkpoints it wrote; another node's --ckpt_dir may hold none
        return {}
    parts = [t for t in targets if t not in WHOLE_SET_TARGETS]
    return combine_checkpoints(ckpt_dir, parts, helpers=[t for t in targets if t == SHARED])


def combine_checkpoints(ckpt_dir: str | Path, parts: list[str], helpers: list[str] = ()) -> dict:
    """Join ``<target>/model.pt`` into ``model.pt`` (a RoutedClassifier state dict), with a manifest and summary.

    ``helpers`` (the all-parts model) were trained only to start others from: their time counts
    in the pipeline's train time, their size not in the deployed model's.
    """
    folder = Path(ckpt_dir)
    state: dict[str, torch.Tensor] = {}
    for target in [ROUTER, *parts]:
        path = folder / target / BEST_MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{target} was not trained: {path} is missing")
        prefix = "router." if target == ROUTER else f"parts.{target}."
        weights = torch.load(path, map_location="cpu", weights_only=True)
        state.update({prefix + k: v for k, v in weights.items()})
    summaries = {t: read_training_summary(folder / t) for t in [ROUTER, *parts]}
    helper_summaries = {t: read_training_summary(folder / t) for t in helpers}
    summary = {
        "train_time_s": round(sum(s.get("train_time_s", 0.0) for s in [*summaries.values(), *helper_summaries.values()]), 2),
        "epochs_completed": max((s.get("epochs_completed", 0) for s in summaries.values()), default=0),
        "n_parameters": sum(s.get("n_parameters", 0) for s in summaries.values()),
        "n_trainable_parameters": sum(s.get("n_trainable_parameters", 0) for s in summaries.values()),
        "model_size_mb": round(sum(s.get("model_size_mb", 0.0) for s in summaries.values()), 2),
        "n_models": len(summaries),
        "models": summaries,
    }
    if helper_summaries:
        summary["initialising_models"] = helper_summaries
    shared = ("bundle", "image_size", "batch_size", "learning_rate", "enhancement")
    summary |= {k: v for k, v in summaries[ROUTER].items() if k in shared}
    if is_main_process():
        torch.save(state, folder / BEST_MODEL_FILE)
        (folder / MANIFEST_FILE).write_text(json.dumps({"router": ROUTER, "parts": parts}, indent=2))
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    logger.info("joined router + %d part models into %s", len(parts), folder / BEST_MODEL_FILE)
    return summary


def build_routed_classifier(ckpt_dir: str | Path, in_channels: int = 1, pooling: str = "avg") -> RoutedClassifier:
    """An untrained RoutedClassifier shaped like the one trained in ``ckpt_dir`` (its manifest's parts)."""
    manifest = Path(ckpt_dir) / MANIFEST_FILE
    if not manifest.is_file():
        raise FileNotFoundError(f"no trained router pipeline: {manifest} is missing (train the bundle first)")
    parts = json.loads(manifest.read_text())["parts"]
    return RoutedClassifier(
        router=efficientnet_b0(in_channels=in_channels, out_channels=len(BODY_PARTS), pooling=pooling),
        part_models={p: efficientnet_b0(in_channels=in_channels, out_channels=1, pooling=pooling) for p in parts},
    )


class RoutingReportWriter:
    """Evaluator handler: the router's accuracy and Patel et al.'s per-part table, beside metrics.json.

    Reads the routes the ``RoutedClassifier`` chose (``last_route``) against each image's true
    body part; at the end of the evaluation adds ``"routing"`` to ``metrics.json`` (written just
    before by ``MetricsReportWriter``, which must come first in the handler list) and writes
    ``patel_et_al_table.md``: TP, FN, FP, TN, accuracy, precision, sensitivity and F1 per part, model
    sizes and training time, as Patel et al. report them.
    """

    def __init__(self, network: nn.Module, output_dir: str | Path, body_part_key: str = "body_part_index") -> None:
        self.network = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        self.output_dir = Path(output_dir)
        self.body_part_key = body_part_key
        self.true: list[int] = []
        self.routed: list[int] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _reset(self, _engine=None) -> None:
        self.true, self.routed = [], []

    def _collect(self, engine) -> None:
        route = self.network.last_route
        if route is None:
            return
        self.routed += route.cpu().reshape(-1).tolist()
        self.true += torch.as_tensor(engine.state.batch[self.body_part_key]).reshape(-1).tolist()

    def routing_metrics(self) -> dict:
        labels = list(range(len(BODY_PARTS)))
        return {
            "router_accuracy": float(accuracy_score(self.true, self.routed)) if self.true else float("nan"),
            "n_images": len(self.true),
            "confusion": {"labels": list(BODY_PARTS),
                          "matrix": confusion_matrix(self.true, self.routed, labels=labels).tolist() if self.true else []},
        }

    def write(self, _engine=None) -> dict:
        path = self.output_dir / "metrics.json"
        doc = json.loads(path.read_text()) if path.is_file() else {}
        doc["routing"] = self.routing_metrics()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2))
        (self.output_dir / "patel_et_al_table.md").write_text(format_patel_et_al_table(doc))
        logger.info("router accuracy %.3f on %d images", doc["routing"]["router_accuracy"], doc["routing"]["n_images"])
        return doc["routing"]
