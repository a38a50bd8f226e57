"""MURA roots, radiograph reading (DICOM and PNG), and the synthetic MURA-like generator."""
from __future__ import annotations

from mura_monai.data.mura import (
    MuraDatasetError,
    MuraSplit,
    find_mura_root,
    load_mura_split,
    mura_datalist,
    mura_study_datalist,
)
from mura_monai.data.patient_metadata import PatientMetadatad, load_patient_metadata
from mura_monai.data.radiograph_reader import (
    LoadRadiograph,
    LoadRadiographD,
    LoadRadiographd,
    LoadRadiographDict,
    RadiographReader,
    RadiographReadError,
    is_dicom,
    read_radiograph,
)
from mura_monai.data.splits import holdout_split, select_body_part

__all__ = [
    "LoadRadiograph",
    "LoadRadiographD",
    "LoadRadiographDict",
    "LoadRadiographd",
    "MuraDatasetError",
    "MuraSplit",
    "PatientMetadatad",
    "RadiographReadError",
    "RadiographReader",
    "find_mura_root",
    "generate_mura_root",
    "holdout_split",
    "is_dicom",
    "load_mura_split",
    "load_patient_metadata",
    "mura_datalist",
    "mura_study_datalist",
    "read_radiograph",
    "select_body_part",
]


def generate_mura_root(*args, **kwargs):
    """See ``mura_monai.data.synthetic.generate_mura_root`` (imported lazily: drawing code is large)."""
    from mura_monai.data.synthetic import generate_mura_root as _generate

    return _generate(*args, **kwargs)
