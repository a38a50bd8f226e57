"""Index of a MURA root, exactly as Stanford ships MURA-v1.1.

Labels live per *study* in ``{split}_labeled_studies.csv``; images are listed in
``{split}_image_paths.csv``; both give paths relative to the folder that holds ``MURA-v1.1/``.
Everything downstream (bundles, metrics, the synthetic generator's tests) reads MURA through
this module, so the real data set and the synthetic one share one code path.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from mura_monai.constants import BODY_PART_INDEX, SPLITS

__all__ = ["MuraDatasetError", "MuraSplit", "load_mura_split", "mura_datalist", "mura_study_datalist", "find_mura_root"]

logger = logging.getLogger(__name__)

MURA_DIR = "MURA-v1.1"
# MURA-v1.1/<split>/XR_<PART>/patientNNNNN/studyN_<positive|negative>/
_STUDY_RE = re.compile(
    r"^MURA-v1\.1/(?P<split>train|valid)/(?P<part>XR_[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+_(?P<suffix>positive|negative))/?$"
)


class MuraDatasetError(FileNotFoundError):
    """A MURA root that cannot be read; the message names the offending path."""


@dataclass
class MuraSplit:
    """One split of a MURA root: image-level and study-level MONAI data dicts."""

    root: Path
    split: str
    images: list[dict] = field(default_factory=list)
    studies: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def find_mura_root(root: str | Path) -> Path:
    """Return the folder holding ``MURA-v1.1/``; accepts that folder or ``MURA-v1.1`` itself."""
    path = Path(root).expanduser()
    if not path.exists():
        raise MuraDatasetError(f"MURA root does not exist: {path}")
    if path.name == MURA_DIR and not (path / MURA_DIR).is_dir():
        return path.parent.resolve()
    if not (path / MURA_DIR).is_dir():
        raise MuraDatasetError(f"no {MURA_DIR}/ folder in MURA root: {path}")
    return path.resolve()


def _read_rows(csv_path: Path) -> list[list[str]]:
    if not csv_path.is_file():
        raise MuraDatasetError(f"missing MURA CSV: {csv_path}")
    with csv_path.open(newline="") as f:
        return [row for row in csv.reader(f) if row and row[0].strip()]


def _parse_study_path(rel: str, csv_path: Path, line: int) -> re.Match:
    match = _STUDY_RE.match(rel.strip())
    if match is None:
        raise MuraDatasetError(f"{csv_path}:{line}: not a MURA study path: {rel!r}")
    return match


def load_mura_split(root: str | Path, split: str, skip_missing: bool = False) -> MuraSplit:
    """Read one split of a MURA root.

    Args:
        root: the folder holding ``MURA-v1.1/`` (or that folder itself).
        split: ``"train"`` or ``"valid"``.
        skip_missing: when an image listed in the CSV is absent on disk, leave it out and record
            it in ``MuraSplit.skipped`` instead of failing. Studies left with no image are dropped.

    Raises:
        MuraDatasetError: naming the missing root, CSV, or image, or the malformed CSV row.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base = find_mura_root(root)
    mura = base / MURA_DIR

    studies_csv = mura / f"{split}_labeled_studies.csv"
    labels: dict[str, int] = {}
    for line, row in enumerate(_read_rows(studies_csv), start=1):
        if len(row) < 2 or row[1].strip() not in ("0", "1"):
            raise MuraDatasetError(f"{studies_csv}:{line}: expected 'study_path,0|1', got {','.join(row)!r}")
        match = _parse_study_path(row[0], studies_csv, line)
        labels[f"{MURA_DIR}/{split}/{match['part']}/{match['patient']}/{match['study']}"] = int(row[1])

    images_csv = mura / f"{split}_image_paths.csv"
    result = MuraSplit(root=base, split=split)
    by_study: dict[str, dict] = {}
    for line, row in enumerate(_read_rows(images_csv), start=1):
        rel = row[0].strip()
        study_rel, _, image_name = rel.rpartition("/")
        match = _parse_study_path(study_rel, images_csv, line)
        study_id = f"{MURA_DIR}/{split}/{match['part']}/{match['patient']}/{match['study']}"
        if study_id not in labels:
            raise MuraDatasetError(f"{images_csv}:{line}: image of a study missing from {studies_csv.name}: {rel}")
        image_path = base / rel
        if not image_path.is_file():
            if not skip_missing:
                raise MuraDatasetError(f"image listed in {images_csv.name} is missing: {image_path}")
            result.skipped.append(str(image_path))
            continue
        label = labels[study_id]
        record = {
            "image": str(image_path),
            "path": str(image_path),
            "label": label,
            "study": study_id,
            "patient": match["patient"],
            "body_part": match["part"],
            "body_part_index": BODY_PART_INDEX.get(match["part"], -1),
            "view": Path(image_name).stem,
            "split": split,
        }
        result.images.append(record)
        study = by_study.setdefault(
            study_id,
            {k: record[k] for k in ("study", "patient", "body_part", "body_part_index", "label", "split")} | {"images": []},
        )
        study["images"].append(str(image_path))
    result.studies = list(by_study.values())
    if result.skipped:
        logger.warning("skipped %d missing image(s) in %s split of %s", len(result.skipped), split, base)
    return result


def mura_datalist(root: str | Path, split: str, skip_missing: bool = False, body_parts: list[str] | None = None) -> list[dict]:
    """Image-level data dicts for a MONAI ``Dataset`` (one per radiograph, carrying its study's label,
    and the patient's ``age`` and ``sex`` when the root has a ``patient_metadata.csv``)."""
    from mura_monai.data.patient_metadata import load_patient_metadata

    images = load_mura_split(root, split, skip_missing=skip_missing).images
    demographics = load_patient_metadata(find_mura_root(root))
    if demographics:
        for record in images:
            known = demographics.get(record["patient"], {})
            age = known.get("age")
            # NaN, not None, for "unknown": the records are collated into batches
            record.update(age=float("nan") if age is None else float(age), sex=known.get("sex", ""))
    if body_parts:
        unknown = sorted(set(body_parts) - set(BODY_PART_INDEX))
        if unknown:
            raise ValueError(f"unknown body part(s) {unknown}; expected names from {sorted(BODY_PART_INDEX)}")
        images = [r for r in images if r["body_part"] in body_parts]
    return images


def mura_study_datalist(root: str | Path, split: str, skip_missing: bool = False) -> list[dict]:
    """Study-level data dicts: one per study with the list of its image paths."""
    return load_mura_split(root, split, skip_missing=skip_missing).studies
