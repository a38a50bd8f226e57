"""Source radiographs for the DICOM output tests: real CR from pydicom-data (MONOCHROME1, no
ImagerPixelSpacing, uncompressed and JPEG 2000), a hand-made DX, and the project's generator."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ALGORITHM = {
    "name": "mura-monai ensemble", "version": "0.1.0", "manufacturer": "mura-monai",
    "members": [{"name": "densenet169_wbce", "version": "0.1.0"}, {"name": "vgg19", "version": "0.2.1"}],
}


def make_study(sources, *, abnormal=True, probability=0.73, body_part="XR_WRIST", operating_point="youden",
               uncertain=True) -> dict:
    """An ensemble result in the shape the pipeline produces, with distinct per-image values."""
    images = [{"path": f"/x/{i}.dcm", "probability": round(0.2 + 0.11 * i, 4), "sop_instance_uid": ds.SOPInstanceUID,
               "members": {"densenet169_wbce": round(0.3 + 0.1 * i, 4), "vgg19": round(0.25 + 0.1 * i, 4)}}
              for i, ds in enumerate(sources)]
    return {"study": sources[0].StudyInstanceUID, "body_part": body_part, "body_part_source": "dicom",
            "probability": probability, "abnormal": abnormal, "threshold": 0.41, "operating_point": operating_point,
            "uncertainty": 0.62 if uncertain else 0.08, "uncertain": uncertain, "disagreement": 0.18,
            "members": {"densenet169_wbce": 0.8, "vgg19": 0.66}, "images": images}


def overlay_for(ds) -> np.ndarray:
    """A deterministic RGB image of the source's size (the caller blends; content is irrelevant here)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    r = np.linspace(0, 255, cols, dtype=np.uint8)[None, :].repeat(rows, 0)
    g = np.linspace(0, 255, rows, dtype=np.uint8)[:, None].repeat(cols, 1)
    return np.stack([r, g, 255 - r], axis=-1)


@pytest.fixture(scope="session")
def pydicom_data() -> pathlib.Path:
    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return pathlib.Path(data_store.__file__).parent / "data"


@pytest.fixture(scope="session")
def rg1_sources(pydicom_data):
    """Chest CR, one study: uncompressed, JPEG 2000 lossless and lossy (three SOP instances)."""
    return [pydicom.dcmread(pydicom_data / n) for n in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")]


@pytest.fixture(scope="session")
def rg3_sources(pydicom_data):
    """Extremity CR without PixelSpacing or ImagerPixelSpacing at all."""
    return [pydicom.dcmread(pydicom_data / n) for n in ("RG3_UNCR.dcm", "RG3_J2KI.dcm")]


def _dx(path: pathlib.Path, study_uid: str, series_uid: str, view: str, orientation) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.PatientID, ds.PatientName, ds.PatientAge, ds.PatientSex = "DXP01", "TEST^WRIST", "047Y", "F"
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.Manufacturer, ds.ReferringPhysicianName = "TEST DX", ""
    ds.BodyPartExamined, ds.ViewPosition, ds.ImageLaterality = "WRIST", view, "R"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1 if view == "PA" else 2
    ds.ImagerPixelSpacing = [0.15, 0.15]
    if orientation is not None:
        ds.PatientOrientation = orientation
    ds.Rows, ds.Columns = 48, 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(48 * 32, dtype=np.uint16) * 40).reshape(48, 32).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.fixture
def dx_sources(tmp_path):
    """Two DX views of a right wrist, MONOCHROME2 16-bit, without StudyID, AccessionNumber or birth
    date (Type 2 attributes real modalities omit); one oblique orientation, one without any."""
    study_uid, series_uid = generate_uid(), generate_uid()
    return [_dx(tmp_path / "pa.dcm", study_uid, series_uid, "PA", ["A", "FL"]),
            _dx(tmp_path / "lat.dcm", study_uid, series_uid, "LL", None)]


@pytest.fixture(scope="session")
def generated_studies(tmp_path_factory):
    """Studies from the project's generator: CR/DX, MONOCHROME1/2, JPEG 2000 and uncompressed."""
    from mura_monai.data.synthetic import generate_mura_root

    base = tmp_path_factory.mktemp("dicom_out_synth")
    generate_mura_root(base / "mura", patients=4, seed=0, dicom_dir=base / "dicom")
    studies: dict[str, tuple[str, list]] = {}
    with open(base / "dicom" / "index.csv", newline="") as f:
        for row in csv.DictReader(f):
            entry = studies.setdefault(row["study_instance_uid"], (row["body_part"], []))
            entry[1].append(pydicom.dcmread(base / "dicom" / row["dicom_path"]))
    return list(studies.values())
