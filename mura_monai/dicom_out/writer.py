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

__all__ = ["write_dicom_outputs"]


def write_dicom_outputs(study: StudyResult | Mapping, sources: Sequence[Dataset], overlays: Mapping[str, np.ndarray],
                        algorithm: Algorithm | Mapping, out_dir, predecessor: Dataset | None = None) -> list[Path]:
    """A re-analysis (the study gained images) overwrites ``sr.dcm`` with the next version of the
    SR, numbered after its predecessor, and writes a fresh heatmap series. The SR comes first in
    the list (:attr:`~mura_monai.results.StudyResult.sr_path` relies on it)."""
    algorithm = Algorithm.coerce(algorithm)
    if not sources:
        raise ValueError("no source images to write results for")
    folder = Path(out_dir) / str(sources[0].StudyInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    instance = int(predecessor.get("InstanceNumber") or 0) + 1 if predecessor is not None else 1
    sr = build_sr(study, sources, algorithm, instance_number=instance, predecessor=predecessor)
    paths = [folder / "sr.dcm"]
    sr.save_as(paths[0], enforce_file_format=True)
    series_uid = generate_uid()
    n = 0
    for source in sources:
        overlay = overlays.get(source.SOPInstanceUID)
        if overlay is None:
            continue
        n += 1
        sc = build_heatmap_sc(source, overlay, series_instance_uid=series_uid, instance_number=n,
                              manufacturer=algorithm.manufacturer)
        paths.append(folder / f"sc_{n}.dcm")
        sc.save_as(paths[-1], enforce_file_format=True)
    return paths
