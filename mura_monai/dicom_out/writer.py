"""One folder per study holding everything the listener sends back to the PACS for it."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mura_monai.dicom_out.secondary_capture import build_heatmap_sc
from mura_monai.dicom_out.sr import build_sr
from mura_monai.results import Algorithm, StudyResult

__all__ = ["write_dicom_outputs", "write_heatmap_captures", "write_sr"]


def write_dicom_outputs(study: StudyResult | Mapping, sources: Sequence[Dataset], overlays: Mapping[str, np.ndarray],
                        algorithm: Algorithm | Mapping, out_dir, predecessor: Dataset | None = None) -> list[Path]:
    """A re-analysis (the study gained images) overwrites ``sr.dcm`` with the next version of the
    SR, numbered after its predecessor, and writes a fresh heatmap series. The SR comes first in
    the list (:attr:`~mura_monai.results.StudyResult.sr_path` relies on it)."""
    return [write_sr(study, sources, algorithm, out_dir, predecessor),
            *write_heatmap_captures(sources, overlays, algorithm, out_dir)]


def _study_folder(sources: Sequence[Dataset], out_dir) -> Path:
    if not sources:
        raise ValueError("no source images to write results for")
    folder = Path(out_dir) / str(sources[0].StudyInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_sr(study: StudyResult | Mapping, sources: Sequence[Dataset], algorithm: Algorithm | Mapping, out_dir,
             predecessor: Dataset | None = None) -> Path:
    """``sr.dcm`` alone: the listener sends the SR as soon as the study is scored and the heatmap
    captures when they are drawn, because the SR references the radiographs, never the captures."""
    algorithm = Algorithm.coerce(algorithm)
    folder = _study_folder(sources, out_dir)
    instance = int(predecessor.get("InstanceNumber") or 0) + 1 if predecessor is not None else 1
    sr = build_sr(study, sources, algorithm, instance_number=instance, predecessor=predecessor)
    path = folder / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def write_heatmap_captures(sources: Sequence[Dataset], overlays: Mapping[str, np.ndarray],
                           algorithm: Algorithm | Mapping, out_dir) -> list[Path]:
    """One secondary capture per source with an overlay, as one new series (``sc_N.dcm``)."""
    algorithm = Algorithm.coerce(algorithm)
    folder = _study_folder(sources, out_dir)
    series_uid = generate_uid()
    paths: list[Path] = []
    for source in sources:
        overlay = overlays.get(source.SOPInstanceUID)
        if overlay is None:
            continue
        sc = build_heatmap_sc(source, overlay, series_instance_uid=series_uid, instance_number=len(paths) + 1,
                              manufacturer=algorithm.manufacturer)
        paths.append(folder / f"sc_{len(paths) + 1}.dcm")
        sc.save_as(paths[-1], enforce_file_format=True)
    return paths
