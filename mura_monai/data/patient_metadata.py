"""Patient age and sex beside the radiograph (Han, Lee and Kim join them to the image features).

Degenerative change, osteopenia and orthopaedic hardware grow with age; a model may use that.
Age and sex come from the DICOM header (``PatientAge``, ``PatientSex``) or, for a MURA root —
whose PNGs carry no header — from an optional ``MURA-v1.1/patient_metadata.csv`` with a header
row ``patient,age,sex`` (``patient00001,45,M``). Stanford's MURA ships no such file: without it
every image reads "age unknown, sex unknown" and a metadata model falls back to the image.

Reference: Han S.J., Lee C.I., Kim S.-J., "Development of medical aid artificial intelligence
through detection of musculoskeletal X-ray abnormalities using artificial neural networks in medical
image data".
"""
from __future__ import annotations

import csv
import re
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform

from mura_monai.metadata_encoding import N_METADATA, metadata_vector

__all__ = [
    "METADATA_FILE", "N_METADATA", "PatientMetadatad", "dicom_age_years", "image_metadata", "load_patient_metadata",
    "metadata_vector",
]

METADATA_FILE = "patient_metadata.csv"
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def dicom_age_years(value) -> float | None:
    """Years from a DICOM Age String (``045Y``, ``006M``, ``003W``, ``010D``); None when absent or malformed."""
    match = _AGE.match(str(value or "").strip().upper())
    return float(int(match[1]) * _UNIT_YEARS[match[2]]) if match else None


def load_patient_metadata(mura_root: str | Path) -> dict[str, dict]:
    """``{patient: {"age": years or None, "sex": "M"/"F"/""}}`` from the root's metadata file; ``{}`` without one.

    Raises:
        ValueError: naming the file and line of a row that is not ``patient,age,sex``.
    """
    path = Path(mura_root) / "MURA-v1.1" / METADATA_FILE
    if not path.is_file():
        return {}
    out: dict[str, dict] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"patient", "age", "sex"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: header must name patient, age and sex, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            age = (row["age"] or "").strip()
            try:
                years = float(age) if age else None
            except ValueError:
                raise ValueError(f"{path}:{line}: age is not a number: {age!r}") from None
            out[row["patient"].strip()] = {"age": years, "sex": (row["sex"] or "").strip().upper()}
    return out


class PatientMetadatad(MapTransform):
    """Adds ``metadata`` (see :func:`metadata_vector`) to a data dict.

    Age and sex come from the dict's ``age`` / ``sex`` (a MURA root's metadata file, joined by
    :func:`~mura_monai.data.mura.mura_datalist`) when given, else from the image's DICOM meta.
    """

    def __init__(self, keys="image", output_key: str = "metadata", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        meta = getattr(d.get(self.keys[0]), "meta", {}) or {}
        age = d.get("age")
        age = None if age is None or (isinstance(age, float) and np.isnan(age)) else float(age)
        if age is None:
            age = dicom_age_years(meta.get("PatientAge"))
        sex = d.get("sex") or meta.get("PatientSex")
        d[self.output_key] = torch.from_numpy(metadata_vector(age, sex))
        return d


_ROOT_CACHE: dict[Path, dict[str, dict]] = {}


def image_metadata(path: str | Path, meta: Mapping) -> np.ndarray:
    """The metadata vector of one radiograph at inference: its DICOM header's age and sex, or for
    a PNG inside a MURA root with a ``patient_metadata.csv``, its patient's row there."""
    age, sex = dicom_age_years(meta.get("PatientAge")), str(meta.get("PatientSex") or "")
    if age is not None or sex:
        return metadata_vector(age, sex)
    path = Path(path).resolve()
    for parent in path.parents:
        if (parent / "MURA-v1.1" / METADATA_FILE).is_file():
            table = _ROOT_CACHE.get(parent)
            if table is None:
                table = _ROOT_CACHE[parent] = load_patient_metadata(parent)
            patient = next((p for p in path.parts if p.startswith("patient")), None)
            row = table.get(patient or "", {})
            return metadata_vector(row.get("age"), row.get("sex"))
    return metadata_vector(None, None)
