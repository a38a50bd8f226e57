"""Study-level predictions from a bundle's ``configs/inference.json`` on DICOM or PNG/JPEG files.

The bundle config says what is assembled (network, preprocessing, threshold); this module
finds the inputs, batches them, and groups images into studies: by StudyInstanceUID for DICOM
(a PACS sends studies), by folder for PNG (MURA's layout). The same path serves the CLI and,
later, the listener's worker.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from monai.utils import convert_to_tensor

from mura_monai.backends import choose_backend, make_runner
from mura_monai.body_parts import body_part_of, body_part_source, study_body_part
from mura_monai.data.patient_metadata import image_metadata
from mura_monai.data.radiograph_reader import RadiographReadError, is_dicom, require_plain_radiograph
from mura_monai.metrics import AGGREGATIONS, group_by_study, study_probabilities
from mura_monai.model_settings import as_flag, load_model_settings
from mura_monai.multiview import (
    EARLY_FUSIONS,
    VIEW_FUSION_FILE,
    VIEW_FUSIONS,
    LearnedViewFusion,
    capture_features,
    fuse_study,
    last_linear,
)
from mura_monai.results import SCHEMA_VERSION, ImageResult, ImageSource, StudyResult
from mura_monai.zoom import ZOOM_COMBINES, zoom_boxes
from mura_monai.zoom import combine as combine_zoom

__all__ = ["BundlePredictor", "body_part_of", "body_part_source", "collect_inputs", "group_studies", "image_record",
           "image_source", "load_weights", "read_inference_config", "refused_records", "study_body_part"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files to analyse: the given files, and the radiographs found under the given folders.

    Inside folders, PNG/JPEG files and DICOM files (with or without the ``.dcm`` suffix, as
    PACS exports often have none) are taken; anything else is ignored.

    Raises:
        FileNotFoundError: naming an input path that does not exist.
        ValueError: when nothing to analyse is found.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_file():
            found.append(path)
            continue
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            if child.suffix.lower() in IMAGE_SUFFIXES or is_dicom(child):
                found.append(child)
    if not found:
        raise ValueError(f"no DICOM, PNG or JPEG files in {', '.join(str(i) for i in inputs)}")
    return found


def group_studies(images: Sequence[dict], threshold: float, aggregation: str = "mean",
                  fused: dict[str, float] | None = None) -> list[StudyResult]:
    """The infer JSON's studies (docs/formats.md) from per-image records (``path``, ``study``,
    ``body_part``, ``probability``).

    ``fused`` gives study probabilities computed by a view-fusion rule that needs more than the
    image probabilities (:mod:`mura_monai.multiview`); other studies use ``aggregation``.
    """
    studies = []
    for study, members, probability in study_probabilities(images, aggregation):
        probability = (fused or {}).get(study, probability)
        studies.append(StudyResult(
            study=study, body_part=study_body_part(m["body_part"] for m in members), probability=probability,
            abnormal=probability > threshold, threshold=threshold,
            images=tuple(ImageResult(path=m["path"], probability=m["probability"]) for m in members)))
    return studies


def refused_records(unreadable: Sequence[tuple[str, str]]) -> list[dict]:
    """The ``refused`` list of the infer JSON: each input that was not scored, and why."""
    return [{"path": path, "reason": reason} for path, reason in unreadable]


def read_inference_config(bundle_dir: Path, models_dir: str | Path | None = None) -> ConfigParser:
    """A bundle's ``configs/inference.json``, rooted at the bundle, its checkpoints where given."""
    config_file = Path(bundle_dir) / "configs" / "inference.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"bundle has no inference config: {config_file}")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle_dir)
    if models_dir is not None:
        parser["ckpt_dir"] = str(models_dir)
    return parser


def image_source(path: Path, image) -> ImageSource:
    """What a loaded image's header and path say about it, before any network has scored it."""
    meta = dict(getattr(image, "meta", {}) or {})
    part, source = body_part_source(path, meta)
    return ImageSource(path=str(path), study=meta.get("StudyInstanceUID") or str(path.parent), body_part=part,
                       body_part_source=source, sop_instance_uid=meta.get("SOPInstanceUID") or None)


def image_record(path: Path, image) -> dict:
    """A working row of the scoring loop: the image's :class:`ImageSource` plus its probability,
    in the shape the metrics take for labelled rows too."""
    return {**dataclasses.asdict(image_source(path, image)), "probability": None}


def _setting(parser: ConfigParser, key: str, default):
    """A config value the bundle may not define (options added after it was written)."""
    return parser.get_parsed_content(key) if key in parser.get() else default


def load_weights(network: torch.nn.Module, ckpt_path: Path, map_location) -> torch.nn.Module:
    """A checkpoint's weights in ``network``, in eval mode: a bare state dict, or one saved as
    ``{"model": state}`` beside other objects."""
    state = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return network.eval()


@dataclass
class _Loaded:
    network: torch.nn.Module
    preprocessing: object
    threshold: float
    aggregation: str
    batch_size: int
    device: torch.device


class BundlePredictor:
    """A bundle's network and preprocessing, loaded once, predicting abnormality per image.

    Args:
        bundle_dir: bundle folder holding ``configs/inference.json`` and ``models/model.pt``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        models_dir: checkpoint folder when not the bundle's ``models/``.
        overrides: config values that replace the bundle's and the recorded model settings.
        backend: ``auto``, ``torch``, ``torchscript`` or ``onnxruntime``, replacing the config's
            ``backend`` (see :mod:`mura_monai.backends`).
    """

    def __init__(
        self, bundle_dir: str | Path, device: str = "auto", models_dir: str | Path | None = None, overrides: dict | None = None,
        backend: str | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        parser = read_inference_config(self.bundle_dir, models_dir)
        parser["device"] = device
        ckpt_dir = parser.get_parsed_content("ckpt_dir")
        self.ckpt_dir = Path(ckpt_dir)
        for key, value in {**load_model_settings(ckpt_dir), **(overrides or {})}.items():
            if key in parser.get():
                parser[key] = value
        ckpt_path = Path(parser.get_parsed_content("ckpt_path"))
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"bundle has no trained model: {ckpt_path} (train it first)")
        torch_device = parser.get_parsed_content("torch_device")
        network = load_weights(parser.get_parsed_content("network"), ckpt_path, torch_device)
        self.loaded = _Loaded(
            network=network,
            preprocessing=parser.get_parsed_content("preprocessing"),
            threshold=float(parser.get_parsed_content("threshold")),
            aggregation=parser.get_parsed_content("aggregation"),
            batch_size=int(parser.get_parsed_content("batch_size")),
            device=torch_device,
        )
        self.view_fusion = _setting(parser, "view_fusion", self.loaded.aggregation)
        if self.view_fusion not in VIEW_FUSIONS:
            raise ValueError(f"view_fusion must be one of {list(VIEW_FUSIONS)}, got {self.view_fusion!r}")
        learned = self.view_fusion == "learned"
        self._learned = LearnedViewFusion.load(self._view_fusion_file(parser, ckpt_dir)) if learned else None
        self._features: list[torch.Tensor] = []
        self.zoom = bool(_setting(parser, "zoom", False))
        self.zoom_threshold = float(_setting(parser, "zoom_threshold", 0.7))
        self.zoom_combine = str(_setting(parser, "zoom_combine", "mean"))
        if self.zoom_combine not in ZOOM_COMBINES:
            raise ValueError(f"zoom_combine must be one of {list(ZOOM_COMBINES)}, got {self.zoom_combine!r}")
        self.input_size = int(_setting(parser, "image_size", 224))
        self.in_channels = int(_setting(parser, "in_channels", 1))
        self.uses_metadata = bool(getattr(getattr(network, "module", network), "uses_metadata", False))
        transforms = list(self.loaded.preprocessing.transforms)
        self._loader, self._rest = transforms[0], Compose(transforms[1:])
        self.backend = choose_backend(backend or str(_setting(parser, "backend", "auto")), ckpt_path.parent, torch_device,
                                      network)
        channels_last = _setting(parser, "channels_last", "auto")
        self.runner = make_runner(self.backend, network, torch_device, amp=as_flag(_setting(parser, "amp", True), "amp"),
                                  channels_last=None if channels_last == "auto" else as_flag(channels_last, "channels_last"),
                                  threads=int(_setting(parser, "onnx_threads", 0)))
        logger.info("%s scores with the %s backend (%s)", self.bundle_dir.resolve().name, self.backend.name,
                    self.backend.reason)

    def _zoom(self, records: list[dict], batch: list[torch.Tensor], originals: list[torch.Tensor],
              metadata: list[np.ndarray] | None = None) -> None:
        """Huschauer's second look: predict again on the attended region of the full-resolution
        radiograph and combine (see :mod:`mura_monai.zoom`)."""
        shapes = [tuple(int(n) for n in image.shape[-2:]) for image in originals]
        boxes = zoom_boxes(self.loaded.network, torch.stack(batch), shapes, self.input_size, self.zoom_threshold)
        crops = [self.prepare({"image": image[..., r0:r1, c0:c1]}) for image, (r0, c0, r1, c1) in zip(originals, boxes)]
        for record, box, shape, zoomed in zip(records, boxes, shapes, self.forward(crops, capture=False, metadata=metadata)):
            first = record["probability"]
            record.update(probability_first=first, probability_zoomed=zoomed, zoom_box=[int(v) for v in box],
                          zoom_box_fraction=round(float((box[2] - box[0]) * (box[3] - box[1])) / (shape[0] * shape[1]), 4),
                          probability=combine_zoom(first, zoomed, self.zoom_combine))

    @staticmethod
    def _view_fusion_file(parser: ConfigParser, ckpt_dir) -> Path:
        configured = parser.get("view_fusion_file")
        return Path(parser.get_parsed_content("view_fusion_file")) if configured else Path(ckpt_dir) / VIEW_FUSION_FILE

    def fuse_views(self, images: Sequence[dict]) -> dict[str, float] | None:
        """Study probabilities of the configured view-fusion rule, where it is not a plain
        aggregation of image probabilities (``learned``, ``early_mean``, ``early_max``)."""
        if self.view_fusion in AGGREGATIONS:
            return None
        groups = group_by_study(images)
        features = torch.stack([r["_features"] for r in images]) if self.view_fusion in EARLY_FUSIONS else None
        head = last_linear(self.loaded.network) if features is not None else None
        return {study: fuse_study(self.view_fusion, [images[i]["probability"] for i in idx],
                                  features[idx] if features is not None else None, head, self._learned)
                for study, idx in groups.items()}

    @property
    def threshold(self) -> float:
        return self.loaded.threshold

    def backend_used(self) -> dict:
        """The backend that scores the images (``name``, ``reason``), as the infer JSON and
        metrics.json record it. Early view fusion scores on the eager network whatever was
        chosen, since it needs the classifier's input, which no exported graph gives."""
        chosen = self.backend
        if self.view_fusion not in EARLY_FUSIONS or chosen.name == "torch":
            return chosen.to_json()
        reason = (f"{self.view_fusion} view fusion needs the classifier's input features, which only the eager "
                  f"network gives ({chosen.name} was chosen: {chosen.reason})")
        if self.zoom:
            reason += f"; the zoomed second look runs on {chosen.name}"
        return {"name": "torch", "reason": reason}

    def load(self, path: Path) -> dict:
        """Read one radiograph with the bundle's loader (the first preprocessing transform).

        Raises :class:`RadiographReadError` for a file that cannot be read and for a DICOM image
        of another modality than a plain radiograph, which no bundle may score."""
        loaded = self._loader({"image": str(path)})
        require_plain_radiograph(dict(getattr(loaded["image"], "meta", {}) or {}), path)
        return loaded

    def prepare(self, loaded: dict) -> torch.Tensor:
        """The network input of an image :meth:`load` read (the rest of the preprocessing).

        Loading and preparing are separate so that an ensemble decodes each file once and
        hands every member its own copy.
        """
        # a plain tensor, not MONAI's MetaTensor: every operation on a MetaTensor goes through its
        # __torch_function__, which made each forward and Grad-CAM pass on it several times slower
        return convert_to_tensor(self._rest({"image": loaded["image"].clone()})["image"], dtype=torch.float32,
                                 track_meta=False)

    def warm_up(self) -> None:
        """One forward pass on a blank image, so that the first study a service scores does not
        pay for the backend's first run (ONNX Runtime plans its memory, oneDNN picks its kernels)."""
        self.forward([torch.zeros(self.in_channels, self.input_size, self.input_size)], capture=False)

    def forward(self, batch: Sequence[torch.Tensor], capture: bool = True,
                metadata: Sequence[np.ndarray] | None = None) -> list[float]:
        """Abnormality probability of each prepared image, from the chosen backend
        (:mod:`mura_monai.backends`). With early view fusion the classifier's input features are
        kept too (``capture``), which needs the eager network's hooks; a metadata network gets
        the images' age and sex (unknown when not given)."""
        loaded = self.loaded
        kwargs = {}
        if metadata is not None and self.uses_metadata:
            kwargs["metadata"] = torch.as_tensor(np.stack(metadata)).to(loaded.device)
        x = torch.stack(list(batch))
        if capture and self.view_fusion in EARLY_FUSIONS:
            with torch.no_grad(), torch.autocast(loaded.device.type, enabled=loaded.device.type == "cuda"), \
                    capture_features(loaded.network, self._features):
                logits = loaded.network(x.to(loaded.device), **kwargs)
        else:
            logits = self.runner(x, **kwargs)
        return torch.sigmoid(logits.float().reshape(len(batch), -1)[:, 0]).cpu().tolist()

    def predict_images(self, paths: Sequence[Path], progress: bool = False,
                       unreadable: list | None = None) -> list[dict]:
        """One record per image: path, probability, study id, body part, DICOM meta.

        A file that cannot be scored raises :class:`RadiographReadError`, unless ``unreadable``
        is a list: then ``(path, reason)`` goes there and the others are scored."""
        from tqdm import tqdm

        records: list[dict] = []
        batch: list[torch.Tensor] = []
        originals: list[torch.Tensor] = []
        metadata: list[np.ndarray] = []

        def flush() -> None:
            self._features.clear()
            for record, prob in zip(records[-len(batch):], self.forward(batch, metadata=metadata or None)):
                record["probability"] = prob
            if self.zoom:
                self._zoom(records[-len(batch):], batch, originals, metadata or None)
            originals.clear()
            metadata.clear()
            if self._features:  # early view fusion: each image's classifier input, kept until its study is fused
                for record, feature in zip(records[-len(batch):], torch.cat(self._features)):
                    record["_features"] = feature
            batch.clear()

        for path in tqdm(paths, desc="infer", unit="image", disable=not progress):
            try:
                loaded = self.load(path)
            except RadiographReadError as exc:
                if unreadable is None:
                    raise
                unreadable.append((str(path), str(exc.reason)))
                continue
            records.append(image_record(path, loaded["image"]))
            batch.append(self.prepare(loaded))
            if self.zoom:
                originals.append(loaded["image"])
            if self.uses_metadata:
                metadata.append(image_metadata(path, getattr(loaded["image"], "meta", {}) or {}))
            if len(batch) == self.loaded.batch_size:
                flush()
        if batch:
            flush()
        return records

    def predict(self, inputs: Iterable[str | Path], progress: bool = False) -> dict:
        """The infer JSON document: ``{"studies": [...], "refused": [...]}`` (docs/formats.md:
        the scored studies and the files that could not be scored, each with its reason)."""
        unreadable: list[tuple[str, str]] = []
        images = self.predict_images(collect_inputs(inputs), progress=progress, unreadable=unreadable)
        fused = self.fuse_views(images)
        for record in images:
            record.pop("_features", None)
        return {
            "schema_version": SCHEMA_VERSION,
            "bundle": self.bundle_dir.resolve().name,
            "bundle_dir": str(self.bundle_dir.resolve()),
            "view_fusion": self.view_fusion,
            "backend": self.backend_used(),
            "studies": [s.to_json() for s in group_studies(images, self.loaded.threshold, self.loaded.aggregation, fused)],
            "refused": refused_records(unreadable),
        }
