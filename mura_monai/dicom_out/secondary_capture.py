"""The heatmap as an RGB Secondary Capture, because every PACS viewer can show one, unlike a
parametric map or a presentation state."""
from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["build_heatmap_sc", "SC_SERIES_DESCRIPTION"]

SC_SERIES_DESCRIPTION = "mura-monai heatmap - NOT FOR DIAGNOSTIC USE"
_SERIES_ATTRIBUTES = ("BodyPartExamined",)


def build_heatmap_sc(source: Dataset, overlay_rgb: np.ndarray, *, series_instance_uid: str,
                     series_number: int = 901, instance_number: int = 1,
                     manufacturer: str = "mura-monai") -> hd.sc.SCImage:
    """The overlay is pixel-aligned with ``source``, so the source's orientation, side and body part
    hold for it unchanged and are copied rather than re-derived."""
    overlay = np.ascontiguousarray(overlay_rgb)
    if overlay.dtype != np.uint8 or overlay.shape != (source.Rows, source.Columns, 3):
        raise ValueError(f"overlay must be uint8 of shape {(source.Rows, source.Columns, 3)}, "
                         f"got {overlay.dtype} {overlay.shape}")
    side = source.get("ImageLaterality") or source.get("Laterality")
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
        laterality=side if side in ("L", "R") else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
    )
    # Oblique orientations ("LF") are valid DICOM that highdicom's enum rejects; unknown stays empty.
    orientation = source.get("PatientOrientation")
    sc.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else None
    sc.copy_patient_and_study_information(source)  # age, size, ... that from_ref_dataset leaves out
    for keyword in _SERIES_ATTRIBUTES:
        if keyword in source:
            setattr(sc, keyword, source.data_element(keyword).value)
    sc.ReferencedImageSequence = [_reference(source)]
    sc.SourceImageSequence = [_reference(source, codes.DCM.SourceImageForImageProcessingOperation)]
    sc.DerivationDescription = "AI abnormality heatmap blended over the source radiograph"
    sc.BurnedInAnnotation = "NO"
    return sc


def _reference(source: Dataset, purpose=None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if purpose is not None:
        item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(purpose)]
    return item
