"""A corpus of radiograph headers as real modalities write them, derived from files we did not write.

Every entry starts from a real file: pydicom-data's extremity CR (``RG3_UNCR``, MONOCHROME1,
10 bits, a vendor's private attributes and trailing padding) and chest CR (``RG1_UNCR``), and
pydicom's own test files, whose encoded pixel data is carried over where pydicom cannot encode
the syntax (JPEG lossless, JPEG extended). Each entry then varies one or a few of the things
vendors disagree on — SOP class and presentation intent, laterality in the image or the series,
paired / unpaired / missing body part, orientation and view, empty Type 2 attributes, pixel
spacing, photometric interpretation, bits stored and sign, transfer syntax, private tags,
character sets, long identifiers, frames — so each variation value occurs at least once
without building the cross product. Pixels are reduced to about 128 px to keep the suite fast.

An entry is scored (a result, an SR and heatmaps are expected) or refused with a reason that
the project documents (``refusal`` holds a fragment of that reason).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

__all__ = ["CorpusEntry", "build_corpus", "SCORED_FEATURES"]

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
_SIZE = 128


@dataclass
class CorpusEntry:
    name: str
    path: Path
    refusal: str | None = None          # a fragment of the documented reason; None: scored
    features: dict = field(default_factory=dict)  # what this entry varies, for coverage checks

    @property
    def scored(self) -> bool:
        return self.refusal is None


def _pydicom_data(name: str) -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data" / name


def _base_cr(seed_file: str = "RG3_UNCR.dcm") -> tuple[Dataset, np.ndarray]:
    """A real CR header and its pixels (stored values) reduced to about 128 px by area averaging."""
    ds = pydicom.dcmread(_pydicom_data(seed_file))
    pixels = ds.pixel_array.astype(np.float32)
    small = cv2.resize(pixels, (_SIZE, int(round(_SIZE * ds.Rows / ds.Columns))), interpolation=cv2.INTER_AREA)
    return ds, small


def _set_pixels(ds: Dataset, values: np.ndarray, bits_stored: int, signed: bool = False) -> None:
    """Re-quantise to ``bits_stored`` keeping the image's contrast; uncompressed, little endian."""
    lo, hi = float(values.min()), float(values.max())
    top = 2 ** bits_stored - 1
    scaled = np.round((values - lo) / max(hi - lo, 1e-6) * top)
    if signed:
        scaled -= 2 ** (bits_stored - 1)
    allocated = 8 if bits_stored <= 8 else 16
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[allocated, signed]
    array = scaled.astype(dtype)
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = array.tobytes()
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.pop("DataSetTrailingPadding", None)  # sized for the original pixel data
    # a window for the original 10-bit values means nothing after re-quantising
    for keyword in ("WindowCenter", "WindowWidth"):
        ds.pop(keyword, None)


def _transplant(ds: Dataset, donor_name: str) -> None:
    """Carry a real file's encoded frame over (pydicom cannot encode JPEG lossless or extended):
    the header is still the CR's, as when a modality compresses with a codec of its own."""
    donor = pydicom.dcmread(get_testdata_file(donor_name))
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        setattr(ds, keyword, donor.data_element(keyword).value)
    ds.PixelData = donor.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = donor.file_meta.TransferSyntaxUID
    for keyword in ("WindowCenter", "WindowWidth", "DataSetTrailingPadding"):
        ds.pop(keyword, None)


def _opencv_jpeg(ds: Dataset, values: np.ndarray) -> None:
    """JPEG baseline from libjpeg (through OpenCV), encapsulated as a modality would send it."""
    _set_pixels(ds, values, 8)
    image = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds.PixelData = encapsulate([encoded.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _to_dx(ds: Dataset, sop_class: str = DX_PRESENTATION, intent: str | None = "FOR PRESENTATION") -> None:
    """The same radiograph as a DX modality sends it: DX SOP class, Image Laterality, intent."""
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "DX"
    if intent is None:
        ds.pop("PresentationIntentType", None)
    else:
        ds.PresentationIntentType = intent
    side = ds.pop("Laterality", None)
    if side is not None and side.value:
        ds.ImageLaterality = side.value
    ds.ImagerPixelSpacing = [0.143, 0.143]


def _fresh(ds: Dataset) -> None:
    """A new study, series and instance, so each entry is a study of its own."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _private(ds: Dataset) -> None:
    block = ds.private_block(0x0029, "ACME XR PROCESSING", create=True)
    block.add_new(0x10, "LO", "MUSCULOSKELETAL 2")
    block.add_new(0x11, "DS", "1.25")
    block.add_new(0x12, "OB", bytes(range(64)))
    nested = Dataset()
    nested.add_new(0x00291010, "LO", "inner")
    block.add_new(0x13, "SQ", [nested])


# name -> (seed, what it changes); each change is a function of (ds, pixels)
def _variants():
    def dx(**kw):
        return lambda ds, px: _to_dx(ds, **kw)

    def attr(**values):
        def apply(ds, px):
            for keyword, value in values.items():
                if value is _ABSENT:
                    ds.pop(keyword, None)
                else:
                    setattr(ds, keyword, value)
        return apply

    def bits(n, signed=False):
        def apply(ds, px):
            _set_pixels(ds, px, n, signed)
            if signed:
                ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 2 ** (n - 1), 1, "US"
        return apply

    def compress(uid, **kw):
        return lambda ds, px: ds.compress(uid, **kw)

    def photometric(value):
        def apply(ds, px):
            if value != ds.PhotometricInterpretation:
                stored = ds.pixel_array
                ds.PixelData = (2 ** ds.BitsStored - 1 - stored).astype(stored.dtype).tobytes()
                ds.PhotometricInterpretation = value
        return apply

    return [
        # name, features, refusal, changes applied in order after the 12-bit uncompressed base
        ("cr_mono1_as_sent", {"sop": "CR", "photometric": "MONOCHROME1", "laterality_series": "R",
                              "body_part": "EXTREMITY", "private": "vendor"}, None, []),
        ("cr_chest_unpaired", {"seed": "RG1", "body_part": "CHEST"}, None, []),
        ("dx_presentation_humerus_u", {"sop": "DX presentation", "image_laterality": "U", "body_part": "HUMERUS"},
         None, [dx(), attr(ImageLaterality="U", BodyPartExamined="HUMERUS")]),
        ("dx_processing", {"sop": "DX processing", "intent": "FOR PROCESSING", "image_laterality": "L"}, None,
         [dx(sop_class=DX_PROCESSING, intent="FOR PROCESSING"), attr(ImageLaterality="L", BodyPartExamined="ELBOW")]),
        ("dx_intent_missing", {"intent": "absent", "image_laterality": "B"}, None,
         [dx(intent=None), attr(ImageLaterality="B", BodyPartExamined="HAND")]),
        ("dx_intent_odd", {"intent": "odd", "image_laterality": "absent"}, None,
         [dx(intent="FOR_PRESENTATION"), attr(ImageLaterality=_ABSENT, BodyPartExamined="SHOULDER")]),
        ("dx_both_lateralities", {"image_laterality": "R", "laterality_series": "R"}, None,
         [dx(), attr(ImageLaterality="R", Laterality="R", BodyPartExamined="WRIST")]),
        ("cr_series_laterality_absent", {"laterality_series": "absent", "body_part": "FOREARM"}, None,
         [attr(Laterality=_ABSENT, BodyPartExamined="FOREARM")]),
        ("cr_series_laterality_empty", {"laterality_series": "empty"}, None, [attr(Laterality="")]),
        ("cr_part_in_description_only", {"body_part": "absent", "description": "study"}, None,
         [attr(BodyPartExamined=_ABSENT, StudyDescription="XR WRIST 3+ VIEWS")]),
        ("cr_part_empty_series_description", {"body_part": "empty", "description": "series"}, None,
         [attr(BodyPartExamined="", StudyDescription="", SeriesDescription="FINGER LAT")]),
        ("cr_part_lowercase", {"body_part": "lowercase"}, None, [attr(BodyPartExamined="wrist")]),
        ("dx_unpaired_skull", {"body_part": "SKULL", "image_laterality": "U"}, None,
         [dx(), attr(ImageLaterality="U", BodyPartExamined="SKULL")]),
        ("dx_orientation_oblique", {"orientation": "oblique", "view": "PA"}, None,
         [dx(), attr(PatientOrientation=["A", "FL"], ViewPosition="PA")]),
        ("dx_orientation_empty", {"orientation": "empty", "view": "empty"}, None,
         [dx(), attr(PatientOrientation=None, ViewPosition="")]),
        ("cr_orientation_absent", {"orientation": "absent", "view": "absent"}, None,
         [attr(PatientOrientation=_ABSENT, ViewPosition=_ABSENT)]),
        ("cr_empty_type2", {"type2": "empty"}, None,
         [attr(PatientName="", PatientID="", PatientBirthDate="", PatientSex="", StudyDate="", StudyTime="",
               AccessionNumber="", StudyID="", ReferringPhysicianName="")]),
        ("cr_type2_absent", {"type2": "absent"}, None,
         [attr(PatientBirthDate=_ABSENT, PatientSex=_ABSENT, AccessionNumber=_ABSENT, StudyID=_ABSENT,
               ReferringPhysicianName=_ABSENT, StudyTime=_ABSENT)]),
        ("cr_pixel_spacing_only", {"spacing": "PixelSpacing"}, None, [attr(PixelSpacing=[0.15, 0.15])]),
        ("dx_imager_spacing_only", {"spacing": "ImagerPixelSpacing"}, None, [dx()]),
        ("dx_both_spacings", {"spacing": "both"}, None, [dx(), attr(PixelSpacing=[0.14, 0.14])]),
        ("dx_zero_spacing", {"spacing": "zero"}, None, [dx(), attr(ImagerPixelSpacing=[0, 0])]),
        ("cr_mono2", {"photometric": "MONOCHROME2"}, None, [bits(12), photometric("MONOCHROME2")]),
        ("dx_8bit", {"bits": 8}, None, [dx(), bits(8)]),
        ("cr_10bit", {"bits": 10}, None, [bits(10)]),
        ("dx_12bit", {"bits": 12}, None, [dx(), bits(12)]),
        ("dx_14bit", {"bits": 14}, None, [dx(), bits(14)]),
        ("dx_16bit", {"bits": 16}, None, [dx(), bits(16), photometric("MONOCHROME2")]),
        ("dx_signed_16bit", {"bits": 16, "signed": True}, None, [dx(), bits(16, signed=True)]),
        ("cr_implicit_vr", {"syntax": "implicit VR LE"}, None, [bits(12), _syntax(ImplicitVRLittleEndian)]),
        ("cr_big_endian", {"syntax": "explicit VR BE"}, None, [bits(12), _syntax(ExplicitVRBigEndian)]),
        ("cr_deflate", {"syntax": "deflate"}, None, [bits(12), _syntax(DeflatedExplicitVRLittleEndian)]),
        ("dx_rle", {"syntax": "RLE"}, None, [dx(), bits(12), compress(RLELossless)]),
        ("dx_jpeg_ls", {"syntax": "JPEG-LS lossless"}, None, [dx(), bits(12), compress(JPEGLSLossless)]),
        ("cr_jpeg_ls_near", {"syntax": "JPEG-LS near-lossless"}, None,
         [bits(12), compress(JPEGLSNearLossless, jls_error=2)]),
        ("dx_jpeg2000_lossless", {"syntax": "JPEG 2000 lossless"}, None, [dx(), bits(12), compress(JPEG2000Lossless)]),
        ("cr_jpeg2000_lossy", {"syntax": "JPEG 2000"}, None, [bits(12), compress(JPEG2000, j2k_cr=[10])]),
        ("dx_jpeg_lossless", {"syntax": "JPEG lossless SV1"}, None,
         [dx(), lambda ds, px: _transplant(ds, "JPGLosslessP14SV1_1s_1f_8b.dcm")]),
        ("cr_jpeg_extended", {"syntax": "JPEG extended 12-bit"}, None,
         [lambda ds, px: _transplant(ds, "JPGExtended.dcm")]),
        ("dx_jpeg_baseline", {"syntax": "JPEG baseline"}, None, [dx(), lambda ds, px: _opencv_jpeg(ds, px)]),
        ("dx_private_tags", {"private": "added"}, None, [dx(), lambda ds, px: _private(ds)]),
        ("cr_latin1_name", {"charset": "ISO_IR 100"}, None,
         [attr(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen", StudyDescription="Hand rechts ä")]),
        ("dx_utf8_name", {"charset": "ISO_IR 192"}, None,
         [dx(), attr(SpecificCharacterSet="ISO_IR 192", PatientName="山田^太郎=やまだ^たろう",
                     InstitutionName="Hôpital Ørsted")]),
        ("dx_long_ids", {"ids": "long"}, None,
         [dx(), attr(PatientID="P" * 64, AccessionNumber="A" * 16, StudyID="S" * 16)]),
        ("dx_long_uids", {"ids": "64-char UIDs"}, None, [dx(), _long_uids]),
        ("dx_window_multivalue", {"voi": "two windows"}, None,
         [dx(), bits(12), attr(WindowCenter=[2048, 1800], WindowWidth=[4096, 2000])]),
        ("dx_multiframe", {"frames": 2}, "frame", [dx(), bits(12), _two_frames]),
        ("mg_on_dx_header", {"modality": "MG"}, "not a plain radiograph", [dx(), attr(Modality="MG")]),
        ("cr_no_pixel_data", {"pixels": "absent"}, "no PixelData", [lambda ds, px: ds.pop("PixelData")]),
    ]


_ABSENT = object()


def _syntax(uid):
    def apply(ds, px):
        if uid == ExplicitVRBigEndian:  # pydicom writes OW bytes as they are: swap them to big endian
            ds.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = uid
    return apply


def _long_uids(ds, px):
    root = "1.2.826.0.1.3680043.8.498."  # pydicom's root: UIDs that are valid and exactly 64 long
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        uid = generate_uid(prefix=root)
        setattr(ds, keyword, (uid + "1" * 64)[:64] if len(uid) < 64 else uid[:64])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _two_frames(ds, px):
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


# Other modalities: real files from pydicom's test data, refused for scoring.
_OTHER_MODALITIES = [
    ("mr_small", "MR_small.dcm", "modality MR"),
    ("ct_small", "CT_small.dcm", "modality CT"),
    ("us_rgb", "US1_UNCR.dcm", "modality US"),
    ("ot_secondary_capture", "SC_rgb.dcm", "modality OT"),
]

SCORED_FEATURES = ("sop", "intent", "image_laterality", "laterality_series", "body_part", "orientation", "view",
                   "type2", "spacing", "photometric", "bits", "signed", "syntax", "private", "charset", "ids")


def build_corpus(folder: Path) -> list[CorpusEntry]:
    """Write the corpus under ``folder`` (one file an entry) and describe it."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = {"RG3": _base_cr("RG3_UNCR.dcm"), "RG1": _base_cr("RG1_UNCR.dcm")}
    entries = []
    for name, features, refusal, changes in _variants():
        original, pixels = bases[features.get("seed", "RG3")]
        ds = pydicom.dcmread(_pydicom_data("RG1_UNCR.dcm" if features.get("seed") == "RG1" else "RG3_UNCR.dcm"))
        _fresh(ds)
        ds.PatientID = f"CONF{len(entries):03d}"
        _set_pixels(ds, pixels, 10 if features.get("seed") != "RG1" else 15)
        for change in changes:
            change(ds, pixels)
        path = folder / f"{name}.dcm"
        # dcmwrite, not save_as: save_as refuses to change the byte order, as the big endian entry does
        pydicom.dcmwrite(path, ds, enforce_file_format=True, little_endian=ds.file_meta.TransferSyntaxUID.is_little_endian,
                         implicit_vr=ds.file_meta.TransferSyntaxUID.is_implicit_VR)
        entries.append(CorpusEntry(name, path, refusal, features))
    for name, file_name, refusal in _OTHER_MODALITIES:
        ds = pydicom.dcmread(get_testdata_file(file_name))
        _fresh(ds)
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        entries.append(CorpusEntry(name, path, refusal, {"modality": ds.Modality}))
    return entries
