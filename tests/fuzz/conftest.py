from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.conformance.corpus import build_corpus
from tests.fuzz.strategies import SECRET

# corpus entries that make good seeds: each transfer syntax the listener accepts, both SOP families
_SEEDS = ("cr_mono1_as_sent", "dx_presentation_humerus_u", "cr_implicit_vr", "cr_deflate", "dx_rle", "dx_jpeg_ls",
          "dx_jpeg2000_lossless", "cr_jpeg_extended", "dx_jpeg_baseline", "dx_private_tags", "dx_utf8_name",
          "dx_signed_16bit")


def _with_secret(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = SECRET
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="session")
def radiograph_seeds(tmp_path_factory) -> list[bytes]:
    """Seeds a C-STORE SCP for radiographs accepts: CR and DX in its transfer syntaxes."""
    pytest.importorskip("data_store", reason="pydicom-data is not installed")
    entries = {e.name: e for e in build_corpus(tmp_path_factory.mktemp("fuzz_seeds"))}
    return [_with_secret(entries[name].path.read_bytes()) for name in _SEEDS]


@pytest.fixture(scope="session")
def reader_seeds(radiograph_seeds) -> list[bytes]:
    """Plus pydicom's own small files of other layouts: big endian, RLE and JPEG-LS MR, palette US."""
    others = ("MR_small_bigendian.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "SC_rgb_rle.dcm",
              "OBXXXX1A_rle.dcm")
    return radiograph_seeds + [_with_secret(open(get_testdata_file(n), "rb").read()) for n in others]
