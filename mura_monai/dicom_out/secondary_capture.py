"""The heatmap as an RGB Secondary Capture, because every PACS viewer can show one, unlike a
parametric map or a presentation state."""
from __future__ import annotations

import re

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["build_heatmap_sc", "source_side", "SC_SERIES_DESCRIPTION", "UNPAIRED_BODY_PARTS"]

SC_SERIES_DESCRIPTION = "mura-monai heatmap - NOT FOR DIAGNOSTIC USE"
# Body Part Examined defined terms (PS3.16 Annex L) for structures that have no side; for these
# General Series Laterality must be absent, for every other part (paired or unnamed) present.
UNPAIRED_BODY_PARTS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "AORTA", "BLADDER", "BRAIN", "CHEST", "CHESTABDOMEN", "CHESTABDPELVIS",
    "COCCYX", "CSPINE", "CTSPINE", "DUODENUM", "ESOPHAGUS", "HEAD", "HEADNECK", "HEART", "JAW", "LARYNX",
    "LIVER", "LSPINE", "LSSPINE", "MEDIASTINUM", "MOUTH", "NECK", "NECKCHEST", "PANCREAS", "PELVIS",
    "PROSTATE", "RECTUM", "SKULL", "SPINE", "SSPINE", "STERNUM", "STOMACH", "TLSPINE", "THYROID", "TSPINE",
    "UTERUS", "WHOLEBODY"})


def build_heatmap_sc(source: Dataset, overlay_rgb: np.ndarray, *, series_instance_uid: str,
                     series_number: int = 901, instance_number: int = 1,
                     manufacturer: str = "mura-monai") -> hd.sc.SCImage:
    """The overlay is pixel-aligned with ``source``, so the source's orientation, side and body part
    hold for it unchanged and are copied rather than re-derived."""
    overlay = np.ascontiguousarray(overlay_rgb)
    if overlay.dtype != np.uint8 or overlay.shape != (source.Rows, source.Columns, 3):
        raise ValueError(f"overlay must be uint8 of shape {(source.Rows, source.Columns, 3)}, "
                         f"got {overlay.dtype} {overlay.shape}")
    side = source_side(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        # highdicom accepts single letters only; the source's own value is set below.
        patient_orientation=("L", "F"),
        laterality=side,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
    )
    # Oblique orientations ("LF") are valid DICOM that highdicom's enum rejects; unknown stays empty.
    orientation = source.get("PatientOrientation")
    sc.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else None  # type: ignore[assignment]
    # General Series Laterality is Type 2C: required when the part is paired (or unnamed) and the
    # IOD has no Image Laterality, which a Secondary Capture never has; absent for an unpaired
    # part. Only L and R are enumerated, so "U", "B" and a missing side are written empty.
    if _body_part(source) in UNPAIRED_BODY_PARTS:
        if "Laterality" in sc:
            del sc.Laterality
    elif side is None:
        sc.Laterality = None  # type: ignore[assignment]  # Type 2: present and empty
    sc.copy_patient_and_study_information(source)  # age, size, ... that from_ref_dataset leaves out
    part = _body_part(source)
    if part:
        sc.BodyPartExamined = part
    sc.ReferencedImageSequence = [_reference(source)]
    sc.SourceImageSequence = [_reference(source, codes.DCM.SourceImageForImageProcessingOperation)]
    sc.DerivationDescription = "AI abnormality heatmap blended over the source radiograph"
    sc.BurnedInAnnotation = "NO"
    return sc


def _body_part(source: Dataset) -> str:
    """Body Part Examined as a valid CS: vendors write "wrist" or "Hand rechts", which the PACS may
    reject in our object though it took theirs; upper case fixes the first, the second is dropped."""
    part = str(source.get("BodyPartExamined") or "").strip().upper()
    return part if re.fullmatch(r"[A-Z0-9_ ]{1,16}", part) else ""


def source_side(source: Dataset) -> str | None:
    """The side a radiograph shows, "L" or "R", or None: Image Laterality wins over the series'
    Laterality because a modality fills it per image, and "U"/"B" say no single side."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            return value
        if value:
            return None
    return None


def _reference(source: Dataset, purpose=None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if purpose is not None:
        item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(purpose)]
    return item
