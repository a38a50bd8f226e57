"""Which MURA study type an image shows: the one rule every part of the system reads it by.

A header, a description, a folder name or the router may say it; inference, the listener and
the review's label export must all agree on which wins, or a study would be filed under one part
when scored and another when its corrected label trains the next model.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from mura_monai.constants import BODY_PARTS, DICOM_BODY_PART

__all__ = ["UNKNOWN", "body_part_of", "body_part_source", "study_body_part"]

UNKNOWN = "UNKNOWN"
_DICOM_TO_MURA = {dicom: mura for mura, dicom in DICOM_BODY_PART.items()}


def body_part_source(path: str | Path | None, meta: Mapping) -> tuple[str, str]:
    """MURA study type of an image and where it was read: ``(part, source)``.

    Sources in the order tried: ``dicom`` (BodyPartExamined), ``description`` (study, then
    series description), ``path`` (a MURA folder name such as ``XR_WRIST``). Returns
    ``("UNKNOWN", "unknown")`` when none says it: the caller decides what an unknown part means
    (the ensemble asks its router, or reports it as unknown), never this function.
    """
    part = str(meta.get("BodyPartExamined", "") or "").upper().strip()
    if part in _DICOM_TO_MURA:
        return _DICOM_TO_MURA[part], "dicom"
    for key in ("StudyDescription", "SeriesDescription"):
        words = str(meta.get(key, "") or "").upper().replace("_", " ").split()
        for dicom_name, mura_name in _DICOM_TO_MURA.items():
            if dicom_name in words:
                return mura_name, "description"
    for component in reversed(Path(path).parts if path is not None else ()):
        if component.upper() in BODY_PARTS:
            return component.upper(), "path"
    return UNKNOWN, "unknown"


def body_part_of(path: str | Path | None, meta: Mapping) -> str:
    """MURA study type of an image (see :func:`body_part_source`); ``"UNKNOWN"`` when unsaid."""
    return body_part_source(path, meta)[0]


def study_body_part(parts: Iterable[str]) -> str:
    """One body part for a study from its images' parts: the part they agree on, ``UNKNOWN``
    when none is known, ``MIXED:A+B`` when they disagree (reported, not resolved by guessing)."""
    known = sorted(set(parts) - {UNKNOWN})
    if not known:
        return UNKNOWN
    return known[0] if len(known) == 1 else "MIXED:" + "+".join(known)
