"""The real files the fuzzers start from, each carrying a known patient name and ID."""
from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from tests.conformance.corpus import build_corpus
from tests.fuzz.strategies import SECRET_ID, SECRET_NAME

# corpus entries that make good seeds: each transfer syntax the listener accepts, both SOP families
RADIOGRAPH_SEEDS = ("cr_mono1_as_sent", "dx_presentation_humerus_u", "cr_implicit_vr", "cr_deflate", "dx_rle",
                    "dx_jpeg_ls", "dx_jpeg2000_lossless", "cr_jpeg_extended", "dx_jpeg_baseline", "dx_private_tags",
                    "dx_utf8_name", "dx_signed_16bit")
# pydicom's own small files of other layouts: big endian, RLE and JPEG-LS MR, RGB, JPEG 2000, deflate
OTHER_SEEDS = ("MR_small_bigendian.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "SC_rgb_rle.dcm",
               "OBXXXX1A_rle.dcm", "US1_J2KR.dcm", "image_dfl.dcm", "MR_small_implicit.dcm")


def with_secret(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName, ds.PatientID = SECRET_NAME, SECRET_ID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def radiograph_seeds(folder: Path) -> list[bytes]:
    """Seeds a C-STORE SCP for radiographs accepts: CR and DX in its transfer syntaxes."""
    entries = {e.name: e for e in build_corpus(folder)}
    return [with_secret(entries[name].path.read_bytes()) for name in RADIOGRAPH_SEEDS]


def reader_seeds(radiographs: list[bytes]) -> list[bytes]:
    return radiographs + [with_secret(Path(get_testdata_file(name)).read_bytes()) for name in OTHER_SEEDS]
