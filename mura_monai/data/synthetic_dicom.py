"""DICOM copies of the synthetic MURA studies (same pixels, same labels).

Layout: ``DIR/<split>/patientNNNNN/studyN/imageN.dcm`` (the label is *not* in the path or the
headers; it is in ``DIR/index.csv``), one file per PNG image. ``index.csv`` has a header row and
the columns in :data:`INDEX_COLUMNS`; ``dicom_path`` is relative to ``DIR``, ``image_path`` and
``study_path`` are the MURA-relative paths used in the root's CSVs (``label`` 1 = abnormal).

The studies mix, balanced over studies:

* CR Image Storage and Digital X-Ray Image Storage - For Presentation (DX);
* MONOCHROME1 (inverted stored values) and MONOCHROME2;
* JPEG 2000 lossless and Explicit VR Little Endian;

and store 12 to 16 bits: ``stored = offset + k * png`` (MONOCHROME1: ``2**bits - 1 - that``) with
a window centre/width that maps the stored range back onto 0..255, and for CR a rescale slope /
intercept, so that modality LUT -> VOI LUT (-> inversion for MONOCHROME1) gives back ``png / 255``.
UIDs come from :func:`pydicom.uid.generate_uid` with entropy from ``(seed, patient, study, image)``,
so files are byte-identical between runs.
"""
from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from mura_monai.constants import DICOM_BODY_PART

__all__ = ["DicomStudyWriter", "INDEX_COLUMNS", "CR_IMAGE_STORAGE", "DX_IMAGE_STORAGE_PRESENTATION",
           "pixel_mapping"]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

INDEX_COLUMNS = ("dicom_path", "image_path", "study_path", "split", "patient_id", "study_instance_uid",
                 "series_instance_uid", "sop_instance_uid", "label", "body_part", "view_position", "laterality",
                 "modality", "sop_class_uid", "photometric_interpretation", "bits_stored", "transfer_syntax_uid")

# CID 4031 codes (SNOMED CT) for Anatomic Region Sequence, per BodyPartExamined.
_ANATOMY_CODES = {
    "ELBOW": ("16953009", "Elbow joint"),
    "FINGER": ("7569003", "Finger"),
    "FOREARM": ("14975008", "Forearm"),
    "HAND": ("85562004", "Hand"),
    "HUMERUS": ("85050009", "Humerus"),
    "SHOULDER": ("16982005", "Shoulder"),
    "WRIST": ("74670003", "Wrist joint"),
}
_DEVICES = {
    "CR": (("SYNTHRAY MEDICAL", "SynCR 350", "CR"), ("ACME IMAGING", "PlateReader 12", "CR")),
    "DX": (("SYNTHRAY MEDICAL", "SynDR 4343", "SCINTILLATOR"), ("NORTHWIND RADIOLOGY", "FlatPanel X", "DIRECT")),
}
_FIELD_MM = {"XR_ELBOW": 240, "XR_FINGER": 110, "XR_FOREARM": 330, "XR_HAND": 230, "XR_HUMERUS": 380,
             "XR_SHOULDER": 300, "XR_WRIST": 160}
# CID 4010 view codes for DX View Code Sequence, per ViewPosition.
_VIEW_CODES = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("272479007", "postero-anterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
    "RLO": ("399312000", "antero-posterior oblique"),
    "LLO": ("399312000", "antero-posterior oblique"),
}
_VIEW_NAME = {"AP": "AP", "PA": "PA", "LL": "LAT", "RL": "LAT", "RLO": "OBL", "LLO": "OBL"}
_STREAM_DICOM, _STREAM_PATIENT = 5, 6


def _ds(v: float) -> str:
    """A DS value (at most 16 characters)."""
    s = f"{v:.6g}"
    return s if len(s) <= 16 else f"{v:.8e}"[:16]


def pixel_mapping(img8: np.ndarray, bits: int, photometric: str, offset: int) -> tuple[np.ndarray, int, int]:
    """Stored values for an 8-bit image, and the stored range ``(lo, hi)`` that 0 and 255 map to
    (for MONOCHROME1 ``lo`` is the stored value of 255)."""
    maxv = (1 << bits) - 1
    k = (maxv - offset) // 255
    v = offset + k * img8.astype(np.uint32)
    if photometric == "MONOCHROME1":
        v = maxv - v
        lo, hi = maxv - offset - 255 * k, maxv - offset
    else:
        lo, hi = offset, offset + 255 * k
    return v.astype(np.uint16), lo, hi


def _orientation(study_specs: dict, view_index: int) -> list[str]:
    """Patient Orientation (row, column directions) from the view's rotation (approximate)."""
    from mura_monai.data.synthetic_anatomy import _Xf

    anat = study_specs["anatomy"]
    xf = _Xf(anat["part"], study_specs["views"][view_index], anat["laterality"])
    kind = study_specs["view_kinds"][view_index]
    lat = anat["laterality"]
    other = {"L": "R", "R": "L"}[lat]
    across = (lat, other) if kind == "frontal" else ("A", "P")

    def letters(ix, iy):  # image direction -> anatomy frame (inverse rotation, then flip)
        ax = (xf.ct * ix + xf.st * iy) * xf.flip
        ay = -xf.st * ix + xf.ct * iy
        parts = []
        for comp, pos, neg in sorted(((ax, *across), (ay, "F", "H")), key=lambda c: -abs(c[0])):
            if abs(comp) > 0.38:
                parts.append(pos if comp > 0 else neg)
        return "".join(parts) or "F"

    return [letters(1.0, 0.0), letters(0.0, 1.0)]


class DicomStudyWriter:
    """Writes the DICOM files of each study and, on :meth:`close`, ``index.csv``."""

    def __init__(self, root):
        self.root = Path(root)
        self.index_path = self.root / "index.csv"
        self.rows: list[dict] = []
        self.count = 0

    # -- per study ------------------------------------------------------------------------
    def write_study(self, study, specs: dict, images: list[np.ndarray], mura_paths: list[str],
                    demographics: tuple[str, int] | None = None) -> list[Path]:
        rng = study.rng(_STREAM_DICOM)
        prng = np.random.default_rng(np.random.SeedSequence([study.seed, study.patient, _STREAM_PATIENT]))
        v = study.dicom_variant
        modality = "CR" if v & 1 else "DX"
        photometric = "MONOCHROME1" if v & 2 else "MONOCHROME2"
        syntax = JPEG2000Lossless if v & 4 else ExplicitVRLittleEndian
        bits = int(rng.choice([12, 14, 15, 16]))
        offset = int(rng.integers(0, (1 << bits) // 32))
        if modality == "CR":
            slope = float(rng.choice([1.0, 0.5, 2.0]))
            intercept = float(rng.choice([0.0, -1024.0, 64.0]))
        else:
            slope, intercept = 1.0, 0.0
        manufacturer, model, detector = _DEVICES[modality][int(rng.integers(2))]

        # patient demographics, shared by the patient's studies
        sex = "M" if prng.random() < 0.5 else "F"
        age = int(prng.integers(18, 86))
        if demographics is not None:  # the MURA root's patient_metadata.csv says the same
            sex, age = demographics
        first = _dt.date(2001, 1, 1) + _dt.timedelta(days=int(prng.integers(0, 11 * 365)))
        study_date = first + _dt.timedelta(days=int(rng.integers(0, 60)) + 120 * (study.study - 1))
        birth = study_date - _dt.timedelta(days=int(age * 365.25 + prng.integers(1, 360)))
        age = (study_date - birth).days // 365.25
        stime = _dt.time(int(rng.integers(7, 20)), int(rng.integers(60)), int(rng.integers(60)))

        ent = ["mura-monai-synthetic", str(study.seed), str(study.patient), str(study.study)]
        study_uid = generate_uid(entropy_srcs=ent + ["study"])
        pid = f"P{study.patient:05d}"
        body = DICOM_BODY_PART[study.body_part]
        n = study.n_views
        desc = f"XR {body} {'3+ VIEWS' if n >= 3 else ('2 VIEWS' if n == 2 else '1 VIEW')}"
        lat = specs["anatomy"]["laterality"]
        sdir = self.root / study.split / study.patient_dir / f"study{study.study}"
        sdir.mkdir(parents=True, exist_ok=True)
        one_series = modality == "DX"
        out = []
        for i, (img, mpath) in enumerate(zip(images, mura_paths)):
            view_pos = specs["view_positions"][i]
            series_no = 1 if one_series else i + 1
            series_uid = generate_uid(entropy_srcs=ent + ["series", str(series_no)])
            sop_uid = generate_uid(entropy_srcs=ent + ["image", str(i + 1)])
            sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE_PRESENTATION
            stored, lo, hi = pixel_mapping(img, bits, photometric, offset)
            vlo, vhi = slope * lo + intercept, slope * hi + intercept
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study_date.strftime("%Y%m%d")
            t_img = (_dt.datetime.combine(study_date, stime) + _dt.timedelta(seconds=40 * i)).time()
            ds.StudyTime = stime.strftime("%H%M%S")
            ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = t_img.strftime("%H%M%S")
            ds.AccessionNumber = f"A{study.seed % 1000:03d}{study.patient:05d}{study.study:02d}"
            ds.Modality = modality
            if modality == "DX":
                ds.PresentationIntentType = "FOR PRESENTATION"
            ds.Manufacturer = manufacturer
            ds.InstitutionName = "SYNTHETIC MSK HOSPITAL"
            ds.ReferringPhysicianName = ""
            ds.StationName = "SYNXR01"
            ds.StudyDescription = desc
            ds.SeriesDescription = f"{body} {_VIEW_NAME.get(view_pos, view_pos)}" if not one_series else body
            ds.ManufacturerModelName = model
            ds.PatientName = f"SYNTH^{pid}"
            ds.PatientID = pid
            ds.PatientBirthDate = birth.strftime("%Y%m%d")
            ds.PatientSex = sex
            ds.PatientAge = f"{int(age):03d}Y"
            ds.BodyPartExamined = body
            ds.KVP = _ds(float(rng.integers(50, 70)))
            ds.DeviceSerialNumber = f"SN{1000 + int(rng.integers(9000))}"
            ds.SoftwareVersions = "mura-monai-synth 1"
            ds.DistanceSourceToDetector = "1000"
            ds.ExposureTime = str(int(rng.integers(5, 40)))
            ds.XRayTubeCurrent = str(int(rng.integers(100, 300)))
            spacing = _FIELD_MM[study.body_part] / max(img.shape)
            ds.ImagerPixelSpacing = [_ds(spacing), _ds(spacing)]
            if modality == "CR":
                ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
            else:
                ds.DetectorType = detector
                ds.DetectorID = "DET1"
            ds.ViewPosition = view_pos
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = str(study.study)
            ds.SeriesNumber = series_no
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = i + 1
            ds.PatientOrientation = _orientation(specs, i)
            if modality == "DX":  # DX Anatomy Imaged: Image Laterality (then no series Laterality)
                ds.ImageLaterality = lat
            else:  # CR: General Series Laterality (paired body part)
                ds.Laterality = lat
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = photometric
            ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
            ds.BitsAllocated = 16
            ds.BitsStored = bits
            ds.HighBit = bits - 1
            ds.PixelRepresentation = 0
            if modality == "DX":
                ds.PixelIntensityRelationship = "LIN"
                ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
            ds.WindowCenter = _ds((vlo + vhi) / 2.0 + 0.5)
            ds.WindowWidth = _ds(vhi - vlo + 1.0)
            ds.VOILUTFunction = "LINEAR"
            ds.WindowCenterWidthExplanation = "FULL RANGE"
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "US"
            ds.LossyImageCompression = "00"
            ds.BurnedInAnnotation = "NO"
            if modality == "DX":
                ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
                code, meaning = _ANATOMY_CODES[body]
                item = Dataset()
                item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
                ds.AnatomicRegionSequence = Sequence([item])
                ds.AcquisitionContextSequence = Sequence([])
                ds.PositionerType = "NONE"
                code, meaning = _VIEW_CODES[view_pos]
                item = Dataset()
                item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
                item.ViewModifierCodeSequence = Sequence([])
                ds.ViewCodeSequence = Sequence([item])
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta.ImplementationVersionName = "MURAMONAI_SYN1"
            if syntax == JPEG2000Lossless:
                ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
            else:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.PixelData = stored.tobytes()
            path = sdir / f"image{i + 1}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append(path)
            self.count += 1
            self.rows.append({
                "dicom_path": path.relative_to(self.root).as_posix(), "image_path": mpath,
                "study_path": study.rel_dir, "split": study.split, "patient_id": pid,
                "study_instance_uid": study_uid, "series_instance_uid": series_uid, "sop_instance_uid": sop_uid,
                "label": study.label, "body_part": study.body_part, "view_position": view_pos, "laterality": lat,
                "modality": modality, "sop_class_uid": sop_class, "photometric_interpretation": photometric,
                "bits_stored": bits, "transfer_syntax_uid": str(syntax),
            })
        return out

    def close(self) -> Path:
        with open(self.index_path, "w", newline="", encoding="ascii") as f:
            w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(self.rows)
        return self.index_path

