"""What an analysis says about a study, as types: the one shape every part of the system shares.

The predictors return these, the output writers and the SR builder take them, the listener stores
them as JSON and the review app reads them back. They are frozen: a step that adds something (the
heatmap of an image, the DICOM objects written) returns a new result with
:func:`dataclasses.replace`, so no consumer has to know which producer added which key.

On disk a result keeps the infer JSON's documented shape (``study``, ``body_part``,
``probability``, ``abnormal``, ``threshold``, ``images``), and what only some producers know
(an ensemble's members, its doubt, the listener's analysis version) is left out where unknown.
The infer document carries :data:`SCHEMA_VERSION`; documents written before it had one are read
as version 1, whose shape they share.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["SCHEMA_VERSION", "Algorithm", "ImageResult", "ImageSource", "MemberVersion", "StudyResult", "read_document"]

SCHEMA_VERSION = 1


def _frozen_floats(values: Mapping[str, float] | None) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in (values or {}).items()})


def _drop_none(document: dict) -> dict:
    return {k: v for k, v in document.items() if v is not None}


@dataclass(frozen=True)
class MemberVersion:
    """A member network of an ensemble, as the DICOM outputs name it."""

    name: str
    version: str = ""


@dataclass(frozen=True)
class Algorithm:
    """The algorithm that produced a result: what the SR's TID 4019 and the SC's equipment name."""

    name: str
    version: str = ""
    manufacturer: str = "mura-monai"
    members: tuple[MemberVersion, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(
            m if isinstance(m, MemberVersion) else MemberVersion(str(m["name"]), str(m.get("version", "")))
            for m in self.members))

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "manufacturer": self.manufacturer,
                "members": [{"name": m.name, "version": m.version} for m in self.members]}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Algorithm:
        return cls(name=str(document["name"]), version=str(document.get("version") or ""),
                   manufacturer=str(document.get("manufacturer") or "mura-monai"),
                   members=tuple(document.get("members") or ()))

    @classmethod
    def coerce(cls, algorithm: Algorithm | Mapping[str, Any]) -> Algorithm:
        """An algorithm from either its type or its JSON, for callers that hold the stored form."""
        if isinstance(algorithm, Algorithm):
            return algorithm
        return cls.from_json(algorithm)


@dataclass(frozen=True)
class ImageSource:
    """An input image as known before scoring: which study it belongs to and what it shows.

    ``study`` is the StudyInstanceUID for DICOM, the folder for PNG/JPEG (MURA's layout);
    ``body_part_source`` says where the part was read (``dicom``, ``description``, ``path``,
    ``router`` or ``unknown``), because a reader trusts a header more than a guess.
    """

    path: str
    study: str
    body_part: str
    body_part_source: str
    sop_instance_uid: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "study", str(self.study))

    def with_body_part(self, body_part: str, source: str) -> ImageSource:
        return dataclasses.replace(self, body_part=body_part, body_part_source=source)


@dataclass(frozen=True)
class ImageResult:
    """One image's score; ``members`` holds each ensemble member's probability."""

    path: str
    probability: float
    sop_instance_uid: str | None = None
    body_part: str | None = None
    members: Mapping[str, float] = field(default_factory=dict)
    heatmap: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "probability", float(self.probability))
        object.__setattr__(self, "members", _frozen_floats(self.members))

    def to_json(self) -> dict:
        return _drop_none({"path": self.path, "probability": self.probability,
                           "sop_instance_uid": self.sop_instance_uid, "body_part": self.body_part,
                           "members": dict(self.members) or None, "heatmap": self.heatmap})

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ImageResult:
        return cls(path=document["path"], probability=document["probability"],
                   sop_instance_uid=document.get("sop_instance_uid"), body_part=document.get("body_part"),
                   members=document.get("members") or {}, heatmap=document.get("heatmap"))


@dataclass(frozen=True)
class StudyResult:
    """A study's call: its probability against the threshold of its body part.

    ``uncertainty`` is the larger of ``disagreement`` (the members' spread) and ``closeness`` (to
    the threshold); ``uncertain`` says whether it reaches the configured level. ``analysis_version``
    and ``unreadable`` are the listener's: which analysis of the study this is, and how many of its
    instances could not be scored. ``dicom_outputs`` lists the SR first, then the heatmap captures.
    """

    study: str
    body_part: str
    probability: float
    abnormal: bool
    threshold: float
    images: tuple[ImageResult, ...] = ()
    body_part_source: str | None = None
    threshold_fitted_on: str | None = None
    operating_point: str | None = None
    disagreement: float | None = None
    closeness: float | None = None
    uncertainty: float | None = None
    uncertain: bool | None = None
    members: Mapping[str, float] = field(default_factory=dict)
    analysis_version: int | None = None
    unreadable: int | None = None
    dicom_outputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "probability", float(self.probability))
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "abnormal", bool(self.abnormal))
        object.__setattr__(self, "images", tuple(
            i if isinstance(i, ImageResult) else ImageResult.from_json(i) for i in self.images))
        object.__setattr__(self, "members", _frozen_floats(self.members))
        if self.dicom_outputs is not None:
            object.__setattr__(self, "dicom_outputs", tuple(str(p) for p in self.dicom_outputs))

    @property
    def finding(self) -> str:
        return "abnormal" if self.abnormal else "normal"

    @property
    def sr_path(self) -> str | None:
        """The SR among the DICOM outputs (written first), if any were written."""
        return self.dicom_outputs[0] if self.dicom_outputs else None

    @property
    def needs_attention(self) -> bool:
        """Whether the worklist puts it first: abnormal, or too doubtful to trust as normal."""
        return self.abnormal or bool(self.uncertain)

    def with_finding(self, abnormal: bool) -> StudyResult:
        """The same result with a reader's finding in place of the machine's."""
        return dataclasses.replace(self, abnormal=bool(abnormal))

    def to_json(self) -> dict:
        document = {
            "study": self.study, "body_part": self.body_part, "body_part_source": self.body_part_source,
            "probability": self.probability, "abnormal": self.abnormal, "threshold": self.threshold,
            "threshold_fitted_on": self.threshold_fitted_on, "operating_point": self.operating_point,
            "disagreement": self.disagreement, "closeness": self.closeness, "uncertainty": self.uncertainty,
            "uncertain": self.uncertain, "members": dict(self.members) or None,
            "images": [image.to_json() for image in self.images],
            "analysis_version": self.analysis_version, "unreadable": self.unreadable,
            "dicom_outputs": list(self.dicom_outputs) if self.dicom_outputs is not None else None,
        }
        return _drop_none(document)

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> StudyResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in names})

    @classmethod
    def coerce(cls, result: StudyResult | Mapping[str, Any]) -> StudyResult:
        """A result from either its type or its JSON, for callers that hold the stored form."""
        if isinstance(result, StudyResult):
            return result
        return cls.from_json(result)


def read_document(document: Mapping[str, Any]) -> list[StudyResult]:
    """The studies of an infer JSON document, of any schema version this package has written."""
    version = int(document.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise ValueError(f"infer document has schema version {version}; this mura-monai reads up to {SCHEMA_VERSION}")
    return [StudyResult.from_json(study) for study in document.get("studies", [])]

