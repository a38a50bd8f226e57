"""What an analysed study leaves behind besides JSON: heatmap overlays and DICOM objects.

Kept apart from :mod:`mura_monai.ensemble_predictor` because heatmaps need gradients (a backward
pass per member and image) and DICOM writing needs the source datasets: both cost more than the
scoring itself, and the listener asks for them per study.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mura_monai.constants import HEATMAP_STUDIES
from mura_monai.results import StudyResult

if TYPE_CHECKING:
    import torch

__all__ = ["HEATMAP_STUDIES", "DecodedImage", "cam_weights", "decoded_image", "heatmap_policy", "heatmap_settings",
           "wants_heatmaps", "write_sample_heatmaps", "write_study_heatmaps", "write_study_outputs",
           "write_study_sr"]

logger = logging.getLogger(__name__)


class DecodedImage(NamedTuple):
    """An image as the scoring pass decoded and preprocessed it, kept for the heatmap pass so that
    the file is not decoded again: the radiograph ``(H0, W0)`` float32 in [0, 1] the overlay is
    drawn on, and each member's network input in member order (``None`` for a member the heatmap
    pass skips)."""

    radiograph: np.ndarray
    prepared: list[torch.Tensor | None]


def decoded_image(members: Sequence, loaded: dict, prepared: Sequence[torch.Tensor | None] | None = None) -> DecodedImage:
    """What the heatmap pass needs of an image ``members[0].load`` read; ``prepared`` the members'
    inputs when the caller has them already (else each member prepares its own)."""
    image = loaded["image"]
    radiograph = np.asarray(image, dtype=np.float32).reshape(np.asarray(image).shape[-2:])
    return DecodedImage(radiograph, list(prepared) if prepared is not None else [m.prepare(loaded) for m in members])


def heatmap_policy(settings: Mapping, override: str | None = None) -> str:
    """The ``heatmap_studies`` in force (an explicit ``override`` first, then the ensemble's
    ``inference.json``, else ``all``), refused with the allowed values when it is none of them:
    a typo must not silently drop every heatmap. Heatmaps can be limited because a backward pass
    per member and image costs more than the scoring, and a normal study's is rarely looked at."""
    policy = override if override is not None else settings.get("heatmap_studies", "all")
    if policy not in HEATMAP_STUDIES:
        raise ValueError(f"heatmap_studies must be one of {', '.join(HEATMAP_STUDIES)}; got {policy!r}")
    return str(policy)


def wants_heatmaps(study: StudyResult, policy: str) -> bool:
    """``uncertain`` follows the worklist: the studies it puts first (abnormal or doubtful)."""
    if policy == "abnormal":
        return study.abnormal
    if policy == "uncertain":
        return study.needs_attention
    return policy == "all"


def cam_weights(fitted) -> list[float]:
    """How much each member's CAM counts: its weight in the combination (the absolute stacking
    coefficient for ``stacking``, its weight for ``weighted_mean``, equal otherwise), and nothing
    for a member the fit left out, so that the heatmap shows what the probability came from."""
    n = len(fitted.members)
    active = set(fitted.active_index)
    if fitted.combine == "stacking" and fitted.stacking:
        weights = [abs(float(c)) for c in fitted.stacking["coef"]]
    elif fitted.combine == "weighted_mean":
        weights = list(fitted.weights)
    else:
        weights = [1.0] * n
    weights = [float(w) if j in active else 0.0 for j, w in enumerate(weights)]
    return weights if sum(weights) > 0 else [1.0 if j in active else 0.0 for j in range(n)]


def _folder_name(study: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("_")[-96:] or "study"


def write_study_outputs(predictor, study: StudyResult, heatmaps_dir: str | Path | None, dicom_out: str | Path | None,
                        predecessor=None, *, decoded: Mapping[str, DecodedImage] | None = None,
                        heatmap_studies: str | None = None) -> StudyResult:
    """Heatmap PNGs (``heatmaps_dir/<study>/NN_<image>.png``) and, for DICOM studies, an SR and
    one secondary capture per image under ``dicom_out``; returns the result with their paths.
    ``predecessor`` is the SR of an earlier analysis of the same study, which the new one
    references (the listener re-analyses a study that gained images).

    ``decoded`` holds images the scoring pass kept (``member_probabilities(keep=...)``, by path):
    those are not decoded again. ``heatmap_studies`` (default: the ensemble's setting) says which
    studies get heatmaps at all; one that gets none still gets its SR, without secondary captures.
    The listener calls the two halves itself (:func:`write_study_sr`, then
    :func:`write_study_heatmaps`) so that the SR leaves before the heatmaps are drawn."""
    study = write_study_sr(predictor, study, dicom_out, predecessor)
    if not wants_heatmaps(study, heatmap_policy(predictor.settings, heatmap_studies)):
        return study
    return write_study_heatmaps(predictor, study, heatmaps_dir, dicom_out, decoded=decoded)


def _dicom_sources(study: StudyResult) -> list:
    """The headers the SR and the captures copy (a full-size radiograph's pixels are megabytes
    that neither needs: the captures carry the overlay's own)."""
    import pydicom

    return [pydicom.dcmread(image.path, stop_before_pixels=True) for image in study.images if image.sop_instance_uid]


def write_study_sr(predictor, study: StudyResult, dicom_out: str | Path | None, predecessor=None) -> StudyResult:
    """The SR alone (``dicom_outputs`` = the SR, or none for a study without DICOM images)."""
    if dicom_out is None:
        return study
    sources = _dicom_sources(study)
    if not sources:
        logger.info("study %s holds no DICOM images: no SR or secondary capture written", _folder_name(study.study))
        return dataclasses.replace(study, dicom_outputs=())
    from mura_monai.dicom_out import write_sr

    sr = write_sr(study, sources, predictor.algorithm, dicom_out, predecessor=predecessor)
    return dataclasses.replace(study, dicom_outputs=(str(sr),))


def write_study_heatmaps(predictor, study: StudyResult, heatmaps_dir: str | Path | None, dicom_out: str | Path | None,
                         *, decoded: Mapping[str, DecodedImage] | None = None) -> StudyResult:
    """Every image's heatmap: a PNG under ``heatmaps_dir`` and, for a DICOM image, a secondary
    capture under ``dicom_out``, appended to the study's ``dicom_outputs``. Costs a backward pass
    per member and image, which is why callers decide first whether the study wants heatmaps
    (:func:`wants_heatmaps`)."""
    from mura_monai.explain import explain_prepared, write_overlay_png

    weights = cam_weights(predictor.fitted)
    method, alpha = heatmap_settings(predictor.settings)
    overlays: dict[str, np.ndarray] = {}
    images = []
    for n, image in enumerate(study.images, start=1):
        kept = decoded.get(str(image.path)) if decoded is not None else None
        if kept is None:
            loaded = predictor.members[0].load(image.path)  # decoded once, prepared per member
            # a member the fit left out gets no backward pass: its weight would be zero anyway
            kept = decoded_image(predictor.members, loaded,
                                 [m.prepare(loaded) if w > 0 else None for m, w in zip(predictor.members, weights)])
        prepared = [(m.loaded.network, x, w) for m, x, w in zip(predictor.members, kept.prepared, weights) if w > 0]
        explained = explain_prepared(prepared, kept.radiograph, method=method, alpha=alpha)
        if heatmaps_dir is not None:
            path = Path(heatmaps_dir) / _folder_name(study.study) / f"{n:02d}_{Path(image.path).stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_overlay_png(path, explained["overlay"])
            image = dataclasses.replace(image, heatmap=str(path))
        if image.sop_instance_uid:
            overlays[image.sop_instance_uid] = explained["overlay"]
        images.append(image)
    study = dataclasses.replace(study, images=tuple(images))
    if dicom_out is None or not overlays:
        return study
    from mura_monai.dicom_out import write_heatmap_captures

    captures = write_heatmap_captures(_dicom_sources(study), overlays, predictor.algorithm, dicom_out)
    return dataclasses.replace(study, dicom_outputs=(*(study.dicom_outputs or ()), *map(str, captures)))


def heatmap_settings(settings: Mapping) -> tuple[str, float]:
    """The CAM method and overlay opacity an ensemble's ``inference.json`` asks for, with the
    defaults every heatmap of the project uses."""
    from mura_monai.explain import HEATMAP_ALPHA, HEATMAP_METHOD

    return str(settings.get("heatmap_method", HEATMAP_METHOD)), float(settings.get("heatmap_alpha", HEATMAP_ALPHA))


def write_sample_heatmaps(members, predictions: dict, out_dir: str | Path, n: int = 4,
                          method: str = "gradcam") -> list[tuple[str, str]]:
    """Heatmaps of a few evaluated studies for the report: the most and the least suspicious
    abnormal studies and the most suspicious normal ones, so a reader sees hits and misses.

    ``members`` as :func:`~mura_monai.explain.explain_image` takes them; ``predictions`` is the
    evaluation's ``predictions.json``. Returns ``(caption, png path)`` pairs.
    """
    from mura_monai.explain import explain_image, write_overlay_png

    studies = sorted(predictions["studies"], key=lambda s: -s["probability"])
    abnormal = [s for s in studies if s["label"] == 1]
    normal = [s for s in studies if s["label"] == 0]
    chosen = abnormal[: (n + 1) // 2 - 1] + abnormal[-1:] + normal[: n // 2]
    first_image = {}
    for image in predictions["images"]:
        first_image.setdefault(image["study"], image["path"])
    samples = []
    for k, study in enumerate(chosen[:n], start=1):
        path = first_image[study["study"]]
        explained = explain_image(members, path, method=method)
        png = write_overlay_png(Path(out_dir) / f"sample_{k}_{_folder_name(study['study'])}.png", explained["overlay"])
        label = "abnormal" if study["label"] else "normal"
        samples.append((f"{study['study']} ({study['body_part']}, truth {label}, p={study['probability']:.3f})", str(png)))
    return samples
