"""One way to read any radiograph: DICOM (as a PACS sends it), PNG or JPEG.

Every input ends up as a ``(H, W)`` ``float32`` array in ``[0, 1]`` (rows x columns, no
transposition), bone bright, plus a metadata dict of a fixed shape.

DICOM pixel pipeline (:func:`read_radiograph`), in this order:

1. Decode the pixel data with pydicom's pixel handlers (uncompressed, deflated, big endian,
   RLE, JPEG baseline / extended / lossless, JPEG-LS, JPEG 2000 through the pylibjpeg and
   pyjpegls plugins).  Only single-frame images are accepted: ``NumberOfFrames > 1`` raises
   :class:`RadiographReadError` (a radiograph is one frame; a cine loop is not a radiograph).
2. Grayscale (``MONOCHROME1`` / ``MONOCHROME2``):

   a. Modality LUT: ``pydicom.pixels.apply_modality_lut`` (Rescale Slope / Intercept or the
      Modality LUT Sequence).
   b. VOI LUT with ``pydicom.pixels.apply_voi_lut``, the first view (index 0) only:

      * *VOI LUT Sequence* when present (preferred over a window, as DICOM says); the result
        is scaled by the range of that LUT's output values (its min and max entry), so a
        LUT Descriptor announcing more bits than the LUT uses does not darken the image.
      * else *Window Center / Width* (the first window when multi-valued) honouring
        *VOI LUT Function* (``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``); the result is scaled
        so that "below the window" is 0 and "above the window" is 1 (whatever output range
        pydicom uses, a negative Rescale Slope included).
      * A VOI LUT or window pydicom refuses (e.g. Window Width 0 with ``LINEAR``) is logged
        and skipped: the next option applies.
      * **No VOI at all** (neither usable): data of at most 8 stored bits, unsigned, with no
        modality transform are taken as display-ready and divided by ``2**BitsStored - 1``
        (exactly what the PNG path does, so an 8-bit DICOM wrapping a PNG reads identically);
        anything else is windowed *robustly* to the ``0.5``-``99.5`` percentiles of the
        modality values (:data:`PERCENTILES`) and clipped, so a few saturated pixels (burned-in
        markers, collimator edges, dead pixels) do not squash the contrast.  A flat image
        (percentiles equal) falls back to plain min-max, and an all-constant image is all 0.
   c. ``MONOCHROME1`` is inverted (``1 - x``) so that bone is bright.  (*Presentation LUT
      Shape* is not read: for CR/DX it is by definition consistent with the photometric
      interpretation.)

3. Colour (``RGB``, ``YBR_*`` — pydicom hands these over as RGB — and ``PALETTE COLOR``
   after ``apply_color_lut``): converted to grayscale as ITU-R BT.601 luma
   ``0.299 R + 0.587 G + 0.114 B`` (the weights OpenCV and Pillow use) and divided by the
   largest value the samples can hold (``2**BitsStored - 1``; for palettes, the LUT's
   entry depth).  No window and no stretch: a colour secondary capture is display-ready.

PNG / JPEG (recognised by their signature, not by the file name; the MURA data set is 8-bit
PNG, sometimes RGB): decoded with OpenCV (``IMREAD_ANYDEPTH | IMREAD_ANYCOLOR``, alpha
dropped, JPEG EXIF orientation applied), colour converted with the same BT.601 luma, divided by
255 (8-bit) or 65535 (16-bit).

Errors: everything that cannot be read raises :class:`RadiographReadError` (a ``ValueError``)
whose message names the path and the reason and never holds patient data.

MONAI: :class:`RadiographReader` is a ``monai.data.ImageReader`` built on
:func:`read_radiograph`; :class:`LoadRadiograph` / :class:`LoadRadiographd` are ``LoadImage`` /
``LoadImaged`` preset with it (channel first, image only): they give a ``(1, H, W)``
``MetaTensor`` of ``float32`` in ``[0, 1]``.  Unlike MONAI's ``PILReader`` (which swaps the
axes to ``(W, H)``, ``reverse_indexing``), the spatial axes stay ``(rows, columns)``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged, MapTransform
from monai.utils import MetaKeys, ensure_tuple, ensure_tuple_rep

from mura_monai.constants import RADIOGRAPH_SOP_CLASSES

__all__ = [
    "DICOM_META_KEYS",
    "PERCENTILES",
    "RadiographReadError",
    "RadiographReader",
    "LoadRadiograph",
    "LoadRadiographd",
    "LoadRadiographD",
    "LoadRadiographDict",
    "is_dicom",
    "read_radiograph",
    "read_radiograph_dataset",
    "require_plain_radiograph",
    "SCORED_MODALITIES",
    "MAX_PIXELS",
]

logger = logging.getLogger(__name__)


class _WithholdValues(logging.Filter):
    """pydicom's reading validation quotes the offending value in full ("Invalid value for VR UI:
    '1.2.840...^DOE^JANE...'"), and a corrupt length can make that value swallow the patient's
    name: the message keeps what was wrong and where, never the value."""

    _QUOTED = re.compile(r"(['\"]).*\1", re.S)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Invalid value" in message or "value for VR" in message:
            record.msg, record.args = self._QUOTED.sub("(value withheld)", message), ()
        return True


logging.getLogger("pydicom").addFilter(_WithholdValues())


@contextmanager
def _values_withheld():
    """The same quoted values also go out as Python warnings, which a command line prints."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Invalid value for VR")
        yield

#: Percentiles of the modality values mapped to 0 and 1 when a DICOM image has no VOI.
PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: DICOM attributes copied into the metadata, in this order (strings, '' when absent;
#: ``PixelSpacing`` is a ``(row, column)`` tuple of floats in mm or ``None``).  PNG and JPEG
#: files get the same keys, empty, so that every meta dict has one shape.
DICOM_META_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "BodyPartExamined",
    "Laterality",
    "ViewPosition",
    "PatientAge",
    "PatientSex",
    "PhotometricInterpretation",
    "StudyDescription",
    "SeriesDescription",
    "AccessionNumber",
    "PixelSpacing",
    "TransferSyntaxUID",
)

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, R G B
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = ("dcm", "dicom", "dic")
_RASTER_SUFFIXES = ("png", "jpg", "jpeg")
# attributes whose values are scrubbed out of error messages, should a library quote them
_PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
)
_MAX_REASON = 300
#: The largest image read (rows x columns); detectors top out near 4300 x 4300 (18 M pixels).
MAX_PIXELS = 64_000_000
#: DICOM Modality values a model trained on radiographs may score: computed and digital
#: radiography ("DR" and "RG" are what some older X-ray units and film digitisers write).
SCORED_MODALITIES: tuple[str, ...] = ("CR", "DX", "DR", "RG")
# CR, DX for presentation, DX for processing: radiographs whatever their Modality says


class RadiographReadError(ValueError):
    """A file that cannot be read as a radiograph.

    The message names the path and the reason; it never holds patient data.  ``path`` and
    ``reason`` are also attributes.
    """

    def __init__(self, path: Any = None, reason: str | None = None):
        self.path = "" if path is None else str(path)
        self.reason = reason
        message = f"cannot read radiograph '{self.path}': {reason}" if reason is not None else self.path
        super().__init__(message)

    def __reduce__(self):  # keep path and reason across pickling (DataLoader workers)
        return (self.__class__, (self.path, self.reason))


# ----------------------------------------------------------------------------------------
# format detection


def _head(path: str, n: int = 132) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_dicom(path: Any) -> bool:
    """Whether ``path`` is a DICOM file (Part 10 with the ``DICM`` prefix, or a bare dataset).

    Files from a PACS often have no suffix, so the content decides: the ``DICM`` prefix at
    offset 128, else (a preamble-less dataset) a first tag in group 0002 or 0008 and a
    dataset pydicom can parse.  Never raises.
    """
    try:
        p = os.fspath(path)
        if not os.path.isfile(p):
            return False
        head = _head(p)
    except (OSError, TypeError, ValueError):
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    if group_le not in (0x0002, 0x0008) and group_be != 0x0008:
        return False
    try:
        import pydicom
        from pydicom.datadict import dictionary_has_tag

        ds = pydicom.dcmread(p, force=True, stop_before_pixels=True)
        tags = list(ds.keys())
    except Exception:
        return False
    # garbage that happens to start like a tag parses into nonsense: ask for known attributes
    return sum(1 for t in tags if dictionary_has_tag(t)) >= 2


def _sniff(path: str) -> str | None:
    head = _head(path)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if is_dicom(path):
        return "dicom"
    return None


# ----------------------------------------------------------------------------------------
# public entry points


def read_radiograph(path: Any) -> tuple[np.ndarray, dict]:
    """Read a DICOM, PNG or JPEG radiograph.

    Returns ``(image, meta)``: ``image`` is ``(H, W)`` ``float32`` in ``[0, 1]`` (rows x
    columns, bone bright); ``meta`` holds ``path``, ``format`` (``"dicom"``, ``"png"`` or
    ``"jpeg"``), ``original_shape`` ``(rows, columns)`` and the :data:`DICOM_META_KEYS`
    (empty for PNG/JPEG).  Raises :class:`RadiographReadError`.
    """
    try:
        p = os.fspath(path)
    except TypeError:
        raise RadiographReadError(repr(path)[:100], "not a file path") from None
    if not os.path.exists(p):
        raise RadiographReadError(p, "no such file")
    if not os.path.isfile(p):
        raise RadiographReadError(p, "not a regular file")
    try:
        kind = _sniff(p)
    except OSError as e:
        raise RadiographReadError(p, f"cannot open: {e.strerror or type(e).__name__}") from None
    if kind in ("png", "jpeg"):
        return _read_raster(p, kind)
    if kind is None:
        if Path(p).suffix.lower().lstrip(".") in _DICOM_SUFFIXES:
            raise RadiographReadError(p, "not a DICOM file: no DICM prefix and no parsable dataset")
        raise RadiographReadError(p, "not a DICOM, PNG or JPEG file")
    import pydicom

    try:
        with _values_withheld():
            ds = pydicom.dcmread(p, force=True)
    except Exception as e:  # truncated or corrupt header
        raise RadiographReadError(p, f"cannot parse DICOM: {_describe(e)}") from None
    return read_radiograph_dataset(ds, p)


def read_radiograph_dataset(ds: Any, path: Any = "<dataset>") -> tuple[np.ndarray, dict]:
    """:func:`read_radiograph` for a pydicom ``Dataset`` already in memory (e.g. one received
    by the listener); ``path`` is only used in the metadata and in error messages.  The dataset
    may be touched: a missing file meta Transfer Syntax UID is filled in from its encoding."""
    p = str(path)
    try:
        with _values_withheld():  # values convert lazily: here, not in dcmread
            return _dicom_to_radiograph(ds, p)
    except RadiographReadError as e:
        raise RadiographReadError(p, _scrub(str(e.reason), ds)) from None
    except Exception as e:  # a value pydicom cannot convert, an unexpected layout...
        raise RadiographReadError(p, _scrub(_describe(e), ds)) from None


def require_plain_radiograph(meta: dict, path: Any = None) -> None:
    """Refuse a DICOM image that is no plain radiograph before a model scores it.

    The reader decodes any grayscale DICOM (a CT slice, an ultrasound frame), which is right for
    showing it but wrong for scoring it: a network trained on radiographs would answer with
    confidence. PNG and JPEG carry no modality and pass (MURA itself is PNG).
    Raises :class:`RadiographReadError` naming the modality and what is scored.
    """
    if meta.get("format", "dicom") != "dicom" and not meta.get("SOPClassUID"):
        return
    modality = str(meta.get("Modality") or "").strip().upper()
    if modality in SCORED_MODALITIES or (not modality and str(meta.get("SOPClassUID")) in RADIOGRAPH_SOP_CLASSES):
        return
    said = f"modality {modality}" if modality else "no modality"
    raise RadiographReadError(path if path is not None else meta.get("path"),
                              f"{said} is not a plain radiograph (scored: {', '.join(SCORED_MODALITIES)})")


# ----------------------------------------------------------------------------------------
# DICOM


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _scrub(message: str, ds: Any) -> str:
    """Remove patient-identifying values from an error message (belt and braces)."""
    for kw in _PHI_KEYWORDS:
        try:  # the stored element, not ds.get(): converting a value under a wrong VR (a name as UI)
            value = ds.get_item(kw).value  # makes pydicom log a warning that quotes it
        except Exception:
            continue
        if value is None:
            continue
        if isinstance(value, (bytes, bytearray)):  # raw: each value in the encodings a name may have
            value = [t for v in bytes(value).split(b"\\") for t in (v.decode("utf-8", "replace"), v.decode("latin-1"))]
        values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for v in values:
            s = str(v).strip()
            parts = {s, *s.replace("=", "^").split("^")}
            for part in sorted(parts, key=len, reverse=True):
                part = part.strip()
                if len(part) >= 3 and part in message:
                    message = message.replace(part, "***")
    return message


def _text(ds: Any, keyword: str) -> str:
    try:
        value = ds.get(keyword, None)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _spacing(ds: Any) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword, None)
            if value is None or len(value) != 2:
                continue
            row, col = float(value[0]), float(value[1])
        except Exception:
            continue
        if math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0:
            return (row, col)
    return None


def _transfer_syntax(ds: Any) -> str:
    try:
        return str(ds.file_meta.TransferSyntaxUID)
    except Exception:
        return ""


def _base_meta(path: str, fmt: str, shape: tuple[int, int]) -> dict:
    meta: dict[str, Any] = {"path": path, "format": fmt, "original_shape": shape}
    for key in DICOM_META_KEYS:
        meta[key] = None if key == "PixelSpacing" else ""
    return meta


def _dicom_meta(ds: Any, path: str, shape: tuple[int, int]) -> dict:
    meta = _base_meta(path, "dicom", shape)
    for key in DICOM_META_KEYS:
        if key == "Laterality":
            meta[key] = _text(ds, "ImageLaterality") or _text(ds, "Laterality")
        elif key == "PixelSpacing":
            meta[key] = _spacing(ds)
        elif key == "TransferSyntaxUID":
            meta[key] = _transfer_syntax(ds)
        else:
            meta[key] = _text(ds, key)
    return meta


def _ensure_transfer_syntax(ds: Any) -> None:
    """A preamble-less dataset has no file meta: infer its transfer syntax from its encoding."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if _transfer_syntax(ds):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = True, True
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _check_native_length(ds: Any, rows: int, cols: int, frames: int) -> None:
    bits_allocated = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    pixels = rows * cols * frames
    if photometric == "YBR_FULL_422":
        expected = pixels * 2 * bits_allocated // 8
        row_bytes = cols * 2 * bits_allocated // 8
    else:
        expected = -(-pixels * samples * bits_allocated // 8)
        row_bytes = max(1, cols * samples * bits_allocated // 8)
    actual = len(ds.PixelData)
    if actual < expected or actual >= expected + max(row_bytes, 2):
        raise RadiographReadError(
            None,
            f"Rows×Columns {rows}×{cols} do not match pixel data length {actual} bytes "
            f"(expected {expected} for BitsAllocated {bits_allocated}, SamplesPerPixel {samples})",
        )


def _dicom_to_radiograph(ds: Any, path: str) -> tuple[np.ndarray, dict]:
    from pydicom.pixels import apply_color_lut

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise RadiographReadError(None, "float pixel data is not a radiograph")
        raise RadiographReadError(None, "not an image: no PixelData")
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword, None) in (None, ""):
            raise RadiographReadError(None, f"missing {keyword}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows <= 0 or cols <= 0:
        raise RadiographReadError(None, f"invalid Rows×Columns {rows}×{cols}")
    if rows * cols > MAX_PIXELS:  # checked before a decoder allocates what a header claims
        raise RadiographReadError(None, f"Rows×Columns {rows}×{cols} is larger than any radiograph "
                                        f"({MAX_PIXELS // 1_000_000} M pixels at most)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise RadiographReadError(
            None, f"multi-frame image (NumberOfFrames {frames}): a radiograph has a single frame"
        )
    _ensure_transfer_syntax(ds)
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_compressed:
        _check_native_length(ds, rows, cols, frames)

    try:
        arr = ds.pixel_array
    except Exception as e:
        raise RadiographReadError(None, f"cannot decode pixel data (transfer syntax {ts}): {_describe(e)}") from None
    if arr.shape[:2] != (rows, cols):
        raise RadiographReadError(
            None, f"decoded pixel data shape {arr.shape} does not match Rows×Columns {rows}×{cols}"
        )

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if arr.ndim == 2 and photometric in ("MONOCHROME1", "MONOCHROME2", ""):
        image = _grayscale_to_unit(arr, ds)
        if photometric == "MONOCHROME1":
            image = 1.0 - image
    elif photometric == "PALETTE COLOR" and arr.ndim == 2:
        rgb = apply_color_lut(arr, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        image = _luma(rgb) / float(2 ** (16 if depth > 8 else 8) - 1)  # LUT entries: 8 or 16 bits
    elif arr.ndim == 3 and arr.shape[2] == 3:  # RGB, or YBR converted to RGB by pydicom
        bits = int(ds.get("BitsStored", None) or ds.BitsAllocated)
        image = _luma(arr) / float(2**bits - 1)
    else:
        raise RadiographReadError(
            None, f"unsupported photometric interpretation '{photometric}' with pixel array shape {arr.shape}"
        )
    return _finish(image), _dicom_meta(ds, path, (rows, cols))


def _valid_voi_lut(ds: Any) -> bool:
    try:
        seq = ds.get("VOILUTSequence", None)
        return bool(seq) and seq[0].get("LUTDescriptor", None) is not None and seq[0].get("LUTData", None) is not None
    except Exception:
        return False


def _valid_window(ds: Any) -> bool:
    try:
        return ds.get("WindowCenter", None) not in (None, "") and ds.get("WindowWidth", None) not in (None, "")
    except Exception:
        return False


def _has_modality_transform(ds: Any) -> bool:
    if ds.get("ModalityLUTSequence", None):
        return True
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return True
    return slope != 1.0 or intercept != 0.0


def _grayscale_to_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT, then VOI (LUT, window, or the fallback), scaled to [0, 1] (not inverted)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        x = apply_modality_lut(arr, ds)
    except Exception as e:
        raise RadiographReadError(None, f"cannot apply the modality LUT: {_describe(e)}") from None

    if _valid_voi_lut(ds):
        try:
            xi = np.rint(x).astype(np.int64) if np.issubdtype(x.dtype, np.floating) else x
            y = apply_voi_lut(xi, ds, index=0, prefer_lut=True)
            descriptor = ds.VOILUTSequence[0].LUTDescriptor
            entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
            lut = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds, index=0, prefer_lut=True)
            return _scale(y, float(np.min(lut)), float(np.max(lut)))
        except Exception as e:
            logger.warning("VOI LUT Sequence not applied (%s); falling back", _describe(e))

    if _valid_window(ds):
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                y = apply_voi_lut(x, ds, index=0, prefer_lut=False)
                lo, hi = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0, prefer_lut=False)
            return _scale(y, float(lo), float(hi))
        except Exception as e:
            logger.warning("Window Center/Width not applied (%s); falling back", _describe(e))

    bits = int(ds.get("BitsStored", None) or ds.BitsAllocated)
    if bits <= 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0 and not _has_modality_transform(ds):
        return x.astype(np.float32) / float(2**bits - 1)

    xf = np.asarray(x, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(xf, PERCENTILES))
    if not hi > lo:
        lo, hi = float(xf.min()), float(xf.max())
    if not hi > lo:
        return np.zeros(xf.shape, dtype=np.float32)
    return _scale(xf, lo, hi)


def _scale(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 1 (``hi < lo`` flips), clipped."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi == lo:
        raise ValueError(f"degenerate output range {lo}..{hi}")
    out = (np.asarray(y, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return (np.asarray(rgb[..., :3], dtype=np.float64) @ _LUMA).astype(np.float32)


def _finish(image: np.ndarray) -> np.ndarray:
    image = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0, out=image))


# ----------------------------------------------------------------------------------------
# PNG / JPEG


def _read_raster(path: str, fmt: str) -> tuple[np.ndarray, dict]:
    import cv2

    try:
        buf = np.fromfile(path, dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except Exception as e:
        raise RadiographReadError(path, f"cannot decode {fmt.upper()} image: {_describe(e)}") from None
    if img is None or img.size == 0:
        raise RadiographReadError(path, f"cannot decode {fmt.upper()} image (corrupt or truncated)")
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise RadiographReadError(path, f"unsupported {fmt.upper()} sample type {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[..., 0]
        else:  # OpenCV gives BGR(A)
            img = _luma(img[..., 2::-1]) if img.shape[2] >= 3 else img[..., 0]
    image = img.astype(np.float32) / scale
    return _finish(image), _base_meta(path, fmt, (int(image.shape[0]), int(image.shape[1])))


# ----------------------------------------------------------------------------------------
# MONAI


class _Radiograph:
    """What :meth:`RadiographReader.read` hands to :meth:`RadiographReader.get_data`."""

    __slots__ = ("array", "meta")

    def __init__(self, array: np.ndarray, meta: dict):
        self.array = array
        self.meta = meta


class RadiographReader(ImageReader):
    """MONAI image reader for radiographs (DICOM, PNG, JPEG) built on :func:`read_radiograph`.

    ``get_data`` returns the ``(H, W)`` ``float32`` array in ``[0, 1]`` — rows first, *not*
    transposed as MONAI's ``PILReader`` does — and the metadata of :func:`read_radiograph` plus
    MONAI's keys: ``spatial_shape`` ``(H, W)``, ``original_channel_dim`` ``nan`` (no channel:
    ``EnsureChannelFirst`` adds one), ``affine`` / ``original_affine`` the 2D identity (3x3).
    In this metadata ``PixelSpacing`` is a float array ``[row, column]`` (``[nan, nan]`` when
    unknown) instead of a tuple or ``None``, so that batches of mixed inputs collate.

    Several files given at once are stacked on a new first (channel) axis.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        """True when every file has a DICOM / PNG / JPEG suffix, or (files from a PACS often
        have none) its content is DICOM, PNG or JPEG."""
        for name in ensure_tuple(filename):
            try:
                p = os.fspath(name)
            except TypeError:
                return False
            suffix = Path(p).suffix.lower().lstrip(".")
            if suffix in _DICOM_SUFFIXES + _RASTER_SUFFIXES:
                continue
            try:
                if not os.path.isfile(p) or _sniff(p) is None:
                    return False
            except OSError:
                return False
        return True

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> _Radiograph | list[_Radiograph]:
        """Read and normalise each file now (errors surface here, as :class:`RadiographReadError`)."""
        filenames = ensure_tuple(data)
        images = [_Radiograph(*read_radiograph(name)) for name in filenames]
        return images if len(filenames) > 1 else images[0]

    def get_data(self, img: _Radiograph | Sequence[_Radiograph]) -> tuple[np.ndarray, dict]:
        items = [img] if isinstance(img, _Radiograph) else list(img)
        arrays, metas = [], []
        for item in items:
            meta = dict(item.meta)
            spacing = meta.get("PixelSpacing")
            meta["PixelSpacing"] = np.asarray(spacing if spacing is not None else (np.nan, np.nan), dtype=np.float64)
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(item.array.shape)
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
            meta[MetaKeys.AFFINE] = np.eye(3)
            meta[MetaKeys.ORIGINAL_AFFINE] = np.eye(3)
            arrays.append(item.array)
            metas.append(meta)
        meta = metas[0]
        if len(arrays) == 1:
            return arrays[0], meta
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise RadiographReadError(
                meta["path"], f"images to stack as channels differ in shape: {sorted(shapes)}"
            )
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta


def _make_reader(reader: Any) -> ImageReader:
    """``None`` -> :class:`RadiographReader`; a class or a (dotted) class name -> an instance."""
    if reader is None:
        return RadiographReader()
    if isinstance(reader, str):
        from pydoc import locate

        located = locate(reader) or globals().get(reader)
        if located is None:
            raise ValueError(f"unknown image reader '{reader}'")
        reader = located
    if isinstance(reader, type):
        return reader()
    return reader


class LoadRadiograph(LoadImage):
    """``LoadImage`` preset for radiographs: ``reader=RadiographReader()``,
    ``ensure_channel_first=True``, ``image_only=True``, ``dtype=float32``.

    Only this reader is used: MONAI's default readers are neither tried as fallbacks nor
    even constructed.  So every file goes through the same normalisation, and a bad file raises
    :class:`RadiographReadError` itself rather than MONAI's "cannot find a suitable reader".

    Not tried: the reader is passed at call time, which ``LoadImage`` uses alone.  Not
    constructed: ``LoadImage.__init__`` (MONAI 1.5/1.6) constructs every reader of
    ``SUPPORTED_READERS`` whatever ``reader`` says, and constructing them is not inert: MONAI's
    ``NvImgCodecPydicomReader`` registers nvImageCodec as pydicom's decoder for the whole process
    where nvImageCodec, CuPy and CUDA are installed (then ``ds.pixel_array`` in this reader would
    decode JPEG and JPEG 2000 with another library, on some machines only), and elsewhere logs a
    warning and raises a ``UserWarning`` at every construction.  No argument of the constructor
    avoids that, so ``__init__`` sets the constructor's attributes itself;
    ``tests/data/test_radiograph_reader.py`` checks that they are still all of them.
    """

    def __init__(
        self,
        reader: Any = None,
        image_only: bool = True,
        dtype: Any = np.float32,
        ensure_channel_first: bool = True,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        expanduser: bool = True,
    ) -> None:
        # the attributes LoadImage.__init__ sets (MONAI 1.5/1.6), without its default readers
        self.auto_select = False
        self.image_only = image_only
        self.dtype = dtype
        self.ensure_channel_first = ensure_channel_first
        self.simple_keys = simple_keys
        self.pattern = prune_meta_pattern
        self.sep = prune_meta_sep
        self.expanduser = expanduser
        self.radiograph_reader = _make_reader(reader)
        self.readers = [self.radiograph_reader]

    def __call__(self, filename: Any, reader: ImageReader | None = None):
        return super().__call__(filename, reader=reader if reader is not None else self.radiograph_reader)


class LoadRadiographd(LoadImaged):
    """``LoadImaged`` preset for radiographs (see :class:`LoadRadiograph`); in a bundle config:
    ``{"_target_": "mura_monai.data.LoadRadiographd", "keys": "image"}``.  Without
    ``image_only=False`` the metadata travel in the ``MetaTensor`` (``d["image"].meta``)."""

    def __init__(
        self,
        keys: Any,
        reader: Any = None,
        dtype: Any = np.float32,
        meta_keys: Any = None,
        meta_key_postfix: str = "meta_dict",
        overwriting: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = True,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        allow_missing_keys: bool = False,
        expanduser: bool = True,
    ) -> None:
        # LoadImaged.__init__ would build a plain LoadImage, and so MONAI's default readers
        # (see LoadRadiograph); the attributes it sets are checked by the reader's tests
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._loader = LoadRadiograph(
            reader, image_only, dtype, ensure_channel_first, simple_keys, prune_meta_pattern, prune_meta_sep, expanduser
        )
        if not isinstance(meta_key_postfix, str):
            raise TypeError(f"meta_key_postfix must be a str but is {type(meta_key_postfix).__name__}.")
        self.meta_keys = ensure_tuple_rep(None, len(self.keys)) if meta_keys is None else ensure_tuple(meta_keys)
        if len(self.keys) != len(self.meta_keys):
            raise ValueError(
                f"meta_keys should have the same length as keys, got {len(self.keys)} and {len(self.meta_keys)}."
            )
        self.meta_key_postfix = ensure_tuple_rep(meta_key_postfix, len(self.keys))
        self.overwriting = overwriting


LoadRadiographD = LoadRadiographDict = LoadRadiographd
