"""What the review app sees of the listener: its studies, images, results and labels, read in place.

The listener's database and spool are the only copy: the app reads the ``studies`` and
``instances`` tables and the heatmaps the worker wrote, and adds nothing but labels. Studies and
images are named by short hashes (of the study key and the SOP Instance UID) so that URLs, browser
history and access logs carry no UID; a hash is looked up again by scanning the tables, cached,
since a hash never changes its meaning.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from listener.config import ListenerConfig
from listener.paths import review_ref, store_url
from listener.review.labels import Label, LabelStore, review_state
from listener.store import Store, Study
from mura_monai.body_parts import body_part_of
from mura_monai.results import StudyResult

__all__ = ["ReviewDatastore", "ReviewImage", "ReviewStudy", "image_id", "study_id"]

# read from the first image of a study for the worklist; PatientName only where the config allows
_HEADER_KEYWORDS = ("AccessionNumber", "StudyDate", "StudyDescription", "BodyPartExamined", "PatientName")


def study_id(study_key: str) -> str:
    return "s" + review_ref(study_key)


def image_id(sop_instance_uid: str) -> str:
    return "i" + review_ref(sop_instance_uid)


@dataclass
class ReviewImage:
    id: str
    sop_instance_uid: str
    path: Path
    probability: float | None = None
    members: dict[str, float] = field(default_factory=dict)
    heatmap: Path | None = None

    def summary(self) -> dict:
        return {"id": self.id, "probability": self.probability, "members": self.members,
                "heatmap": self.heatmap is not None}


@dataclass
class ReviewStudy:
    id: str
    study: Study
    header: dict
    images: list[ReviewImage]
    original: Label | None
    final: Label | None

    @property
    def result(self) -> StudyResult | None:
        return self.study.result

    @property
    def analysed(self) -> bool:
        return self.result is not None

    @property
    def review(self) -> str:
        return review_state(self.original, self.final)

    @property
    def finding(self) -> str | None:
        """The model's finding."""
        return self.result.finding if self.result is not None else None

    def summary(self, show_patient_name: bool = False) -> dict:
        """One worklist row."""
        r = self.result
        date = self.header.get("StudyDate", "")
        row = {
            "id": self.id,
            "accession_number": self.header.get("AccessionNumber", ""),
            "study_date": f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else date,
            "description": self.header.get("StudyDescription", ""),
            "body_part": r.body_part if r is not None else body_part_of(None, self.header),
            "state": self.study.state,
            "analysed": self.analysed,
            "finding": self.finding,
            "probability": r.probability if r is not None else None,
            "threshold": r.threshold if r is not None else None,
            "operating_point": r.operating_point if r is not None else None,
            "uncertain": bool(r is not None and r.uncertain),
            "uncertainty": r.uncertainty if r is not None else None,
            "review": self.review,
            "final": self.final.as_dict() if self.final else None,
            "images": len(self.images),
        }
        if show_patient_name:
            row["patient_name"] = self.header.get("PatientName", "")
        return row

    def detail(self, history: list[Label], show_patient_name: bool = False) -> dict:
        """The study view: every image, the members' votes, the labels' history."""
        r = self.result
        members = [] if r is None else [
            {"name": name, "probability": p, "vote": "abnormal" if p > r.threshold else "normal"}
            for name, p in r.members.items()]
        return self.summary(show_patient_name) | {
            "images": [image.summary() for image in self.images],
            "members": members,
            "disagreement": r.disagreement if r is not None else None,
            "threshold_fitted_on": r.threshold_fitted_on if r is not None else None,
            "original": self.original.as_dict() if self.original else None,
            "labels": [label.as_dict() | {"image": image_id(label.sop_instance_uid) if label.sop_instance_uid else None}
                       for label in history],
            "analysis_version": r.analysis_version if r is not None else None,
            "version": self.study.version,
        }


class ReviewDatastore:
    """The studies of one listener spool as the review sees them."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self.store = Store(store_url(config))
        self.labels = LabelStore(self.store)
        self._lock = threading.Lock()
        self._study_keys: dict[str, str] = {}      # study id -> study key
        self._images: dict[str, tuple[str, str]] = {}  # image id -> (study key, SOP Instance UID)
        self._headers: dict[tuple[str, str], dict] = {}

    # -- ids --------------------------------------------------------------------------------
    def _reindex(self) -> None:
        keys, instances = self.store.study_keys(), self.store.instance_index()
        with self._lock:
            for key in keys:
                self._study_keys[study_id(key)] = key
            for key, uid in instances:
                self._images[image_id(uid)] = (key, uid)

    def study_key(self, sid: str) -> str | None:
        if sid not in self._study_keys:
            self._reindex()
        return self._study_keys.get(sid)

    def image_ref(self, iid: str) -> tuple[str, str] | None:
        if iid not in self._images:
            self._reindex()
        return self._images.get(iid)

    # -- reading ----------------------------------------------------------------------------
    def _header(self, key: str, first_path: str) -> dict:
        cached = self._headers.get((key, first_path))
        if cached is not None:
            return cached
        try:
            ds = pydicom.dcmread(first_path, stop_before_pixels=True, specific_tags=list(_HEADER_KEYWORDS))
            header = {k: str(ds.get(k, "") or "") for k in _HEADER_KEYWORDS}
        except Exception:  # an unreadable file still has a row on the worklist, without its header
            header = {}
        self._headers[(key, first_path)] = header
        return header

    def _build(self, study: Study, labels: dict[tuple[str, str], Label] | None = None) -> ReviewStudy:
        instances = self.store.instances(study.key)
        scored = {image.sop_instance_uid: image for image in (study.result.images if study.result else ())}
        images = []
        for row in instances:
            uid = row["sop_instance_uid"]
            scored_image = scored.get(uid)
            heatmap = scored_image.heatmap if scored_image else None
            images.append(ReviewImage(
                id=image_id(uid), sop_instance_uid=uid, path=Path(row["path"]),
                probability=scored_image.probability if scored_image else None,
                members=dict(scored_image.members) if scored_image else {},
                heatmap=Path(heatmap) if heatmap and Path(heatmap).is_file() else None))
        # analysed images first, in the result's order (the worker's order is the SR's order)
        order = {uid: n for n, uid in enumerate(scored)}
        images.sort(key=lambda image: order.get(image.sop_instance_uid, len(order)))
        header = self._header(study.key, instances[0]["path"]) if instances else {}
        if labels is None:
            original, final = (self.labels.latest(study.key, "original"), self.labels.latest(study.key, "final"))
        else:
            original, final = labels.get((study.key, "original")), labels.get((study.key, "final"))
        return ReviewStudy(study_id(study.key), study, header, images, original, final)

    def studies(self) -> list[ReviewStudy]:
        """Every study the listener knows, analysed or not."""
        self.labels.record_originals()
        labels = self.labels.latest_study_labels()
        return [self._build(study, labels) for study in self.store.studies()]

    def study(self, sid: str) -> ReviewStudy | None:
        key = self.study_key(sid)
        if key is None:
            return None
        self.labels.record_originals()
        study = self.store.study(key)
        return self._build(study) if study else None

    def find(self, any_id: str) -> tuple[ReviewStudy, ReviewImage | None] | None:
        """A study id, or an image id with its study: MONAI Label calls both "image"."""
        if any_id.startswith("i"):
            ref = self.image_ref(any_id)
            if ref is None:
                return None
            study = self.study(study_id(ref[0]))
            image = next((i for i in study.images if i.id == any_id), None) if study else None
            return (study, image) if study and image else None
        study = self.study(any_id)
        return (study, None) if study else None

    def history(self, study: ReviewStudy) -> list[Label]:
        return self.labels.history(study.study.key)

    def close(self) -> None:
        self.store.close()


def radiograph_png(path: Path, max_side: int = 2048) -> bytes:
    """The radiograph as the model read it (modality and VOI LUT applied, MONOCHROME1 inverted),
    as an 8-bit PNG a browser can show; large detectors are scaled down for the screen."""
    import cv2
    import numpy as np

    from mura_monai.data.radiograph_reader import read_radiograph

    image, _ = read_radiograph(path)
    scale = max_side / max(image.shape)
    if scale < 1:
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".png", np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8))
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()
