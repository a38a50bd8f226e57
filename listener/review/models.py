"""The models the review app offers MONAI Label's ``/info/`` and ``/infer/{model}``: the ensemble of
``[model]`` and each of its members.

``/info/`` is answered from the bundle's files alone (``configs/inference.json``,
``ensemble.json``), so the page and the worklist never wait for torch; the networks load on
the first ``/infer`` call and stay loaded, as in the worker, because loading them costs seconds
and a study a fraction of that.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
from pathlib import Path

from listener.config import ListenerConfig
from listener.review.datastore import ReviewImage, ReviewStudy, image_id
from mura_monai.ensemble import FITTED_FILE, FittedEnsemble
from mura_monai.operating_points import DEFAULT_OPERATING_POINT
from mura_monai.results import StudyResult

__all__ = ["ModelRunner", "describe_models"]


def _ensemble_files(config: ListenerConfig) -> tuple[Path, dict, FittedEnsemble | None]:
    """The ensemble bundle, its inference settings and its fitted combination (None before
    ``fit-ensemble``), read by the classes that write them; no torch is loaded."""
    bundle = config.resolve(config.model.bundle)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    models_dir = config.resolve(config.model.models_dir) if config.model.models_dir else bundle / "models"
    fitted_path = models_dir / FITTED_FILE
    return bundle, inference, FittedEnsemble.load(fitted_path) if fitted_path.is_file() else None


def describe_models(config: ListenerConfig) -> dict:
    """MONAI Label's ``models`` of ``/info/``: the ensemble (its thresholds per body part at its
    operating point) and its members, each a binary classifier with the label ``abnormal``."""
    bundle, inference, fitted = _ensemble_files(config)
    operating_point = inference.get("operating_point", DEFAULT_OPERATING_POINT.value)
    thresholds = {part: points.get(operating_point) for part, points in (fitted.thresholds if fitted else {}).items()}
    members = fitted.members if fitted else [m["name"] for m in inference.get("members", [])]
    labels = {"abnormal": 1}
    models = {bundle.name: {
        "type": "classification", "dimension": 2, "labels": labels, "members": members,
        "description": "Ensemble of the members: calibrated, combined, thresholded per body part",
        "config": {"combine": fitted.combine if fitted else inference.get("combine"),
                   "calibration": fitted.calibration if fitted else inference.get("calibration"),
                   "operating_point": operating_point, "thresholds": thresholds,
                   "fitted": fitted is not None},
    }}
    for name in members:
        models[name] = {"type": "classification", "dimension": 2, "labels": labels,
                        "description": f"Ensemble member {name} (calibrated on the ensemble's fit split)",
                        "config": {"member_of": bundle.name}}
    return models


class ModelRunner:
    """Runs the ensemble, or one member, on stored images; one call at a time."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self.name = config.resolve(config.model.bundle).name
        self._predictor = None
        self._lock = threading.Lock()

    def _loaded(self):
        if self._predictor is None:
            from listener.worker import load_predictor

            self._predictor = load_predictor(self.config)
        return self._predictor

    def infer(self, model: str, study: ReviewStudy, image: ReviewImage | None) -> tuple[dict, bytes | None]:
        """``(result, heatmap PNG)`` for ``image``, or for the whole study (heatmap of its first
        image). Raises KeyError for a model that is neither the ensemble nor a member."""
        images = [image] if image is not None else study.images
        if not images:
            raise ValueError("the study holds no image")
        with self._lock:
            predictor = self._loaded()
            if model != self.name and model not in predictor.member_names:
                raise KeyError(model)
            unreadable: list = []
            decoded: dict = {}
            records, P = predictor.member_probabilities([i.path for i in images], unreadable=unreadable, keep=decoded)
            if not records:
                raise ValueError("no decodable radiograph among the images")
            result = predictor.studies(records, P)[0]  # the images of one study
            heatmap = self._heatmap(predictor, model, result, decoded[result.images[0].path])
        by_path = {str(i.path): i for i in images}
        ensemble = model == self.name
        probability = result.probability if ensemble else result.members[model]
        params = {
            "model": model, "study": study.id, "image": image.id if image else None,
            "body_part": result.body_part, "probability": probability, "threshold": result.threshold,
            "abnormal": probability > result.threshold,
            "finding": "abnormal" if probability > result.threshold else "normal",
            "operating_point": result.operating_point, "members": dict(result.members) if ensemble else {},
            "uncertainty": result.uncertainty if ensemble else None,
            "uncertain": result.uncertain if ensemble else None,
            "images": [{"id": image_id(by_path[r.path].sop_instance_uid) if r.path in by_path else None,
                        "probability": r.probability if ensemble else r.members[model]}
                       for r in result.images],
            "unreadable": len(unreadable),
        }
        return params, heatmap

    @staticmethod
    def _heatmap(predictor, model: str, result: StudyResult, first) -> bytes | None:
        """The first image's heatmap (``first``: that image as the scoring decoded it): the
        ensemble's weighted CAM, or the member's own. Asked for here, so drawn whatever the
        ensemble's ``heatmap_studies`` leaves out of the worker's outputs."""
        from mura_monai.ensemble_outputs import heatmap_settings, write_study_heatmaps
        from mura_monai.explain import explain_prepared, write_overlay_png

        with tempfile.TemporaryDirectory(prefix="mura-review-") as tmp:
            if model not in predictor.member_names:
                written = write_study_heatmaps(predictor, dataclasses.replace(result, images=result.images[:1]), tmp, None,
                                               decoded={result.images[0].path: first})
                path = written.images[0].heatmap
            else:
                index = predictor.member_names.index(model)
                method, alpha = heatmap_settings(predictor.settings)
                explained = explain_prepared([(predictor.members[index].loaded.network, first.prepared[index], 1.0)],
                                             first.radiograph, method=method, alpha=alpha)
                path = str(write_overlay_png(Path(tmp) / "heatmap.png", explained["overlay"]))
            return Path(path).read_bytes() if path else None
