"""Mutations of real radiographs for fuzzing the two doors that take bytes from outside.

Seeds are conformance-corpus entries (pydicom-data's CR, re-encoded by pydicom's encoders and
carried over from pydicom's own test files) plus pydicom test files of other layouts. Mutations
are of four kinds, because each finds what the others miss:

* raw bytes (flips, inserts, deletes, truncation, 4-byte runs made absurd), weighted towards the
  header, where a parser decides;
* attributes (one to three set to a value that contradicts the pixel data or the standard, or
  deleted), because a byte flip rarely lands on Rows or BitsAllocated;
* one element's encoding (its VR or its length field rewritten in place), because pydicom will
  not write a wrong VR or length on purpose, and a lying length is where readers over-allocate;
* the file meta's transfer syntax swapped for another one, the data set left as it is.

The suite runs a fixed, derandomized number of examples; ``MURA_FUZZ_EXAMPLES=N`` (``make fuzz``,
``python -m tests.fuzz``) runs N per target with fresh randomness and keeps what it finds in
``.hypothesis/``.
"""
from __future__ import annotations

import io
import json
import os
import struct

import pydicom
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

# every seed's patient name and ID: neither may reach an error message or a log line
SECRET_NAME = "FUZZ^SECRETNAME"
SECRET_ID = "SECRETPID4711"
SECRETS = ("SECRETNAME", SECRET_ID)
SECRET = SECRET_NAME  # kept for callers that only need the name

_LONG_RUN = int(os.environ.get("MURA_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(suite_examples: int) -> settings:
    """Short and reproducible in the suite; long and random (with a database) when asked."""
    if _LONG_RUN:
        return settings(max_examples=_LONG_RUN, deadline=None, derandomize=False,
                        suppress_health_check=list(HealthCheck))
    return settings(max_examples=suite_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def report(target: str, outcomes: dict) -> None:
    """What a long run did, for ``python -m tests.fuzz`` to print (hypothesis' own statistics do
    not see a ``@given`` function defined inside a test, as these are, to share one SCP)."""
    path = os.environ.get("MURA_FUZZ_REPORT")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"target": target, **outcomes}) + "\n")


def meta_end(data: bytes) -> int:
    """Offset of the data set: after the preamble and the file meta group (0 without them)."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return fp.tell()


# attribute -> values that real files have been seen to carry, or that contradict the pixel data
_STRUCTURED = {
    "Rows": [0, 1, 3, 65535, 200, 8000],
    "Columns": [0, 1, 7, 65535, 200, 8000],
    "BitsAllocated": [0, 1, 8, 12, 32, 64],
    "BitsStored": [0, 1, 7, 17, 64],
    "HighBit": [0, 31, 64],
    "SamplesPerPixel": [0, 2, 3, 4],
    "PixelRepresentation": [0, 1, 2],
    "PhotometricInterpretation": ["MONOCHROME3", "RGB", "YBR_FULL_422", "PALETTE COLOR", "", "monochrome2",
                                  "YBR_FULL"],
    "NumberOfFrames": ["0", "2", "-1", "abc", "100000", "1"],
    "PlanarConfiguration": [1, 7],
    "RescaleSlope": ["0", "-1", "1e308", "nan"],
    "RescaleIntercept": ["-1e308", "inf", "3"],
    "WindowCenter": ["0", "-5", "nan", "1e30"],
    "WindowWidth": ["0", "-1", "1e-30", "inf"],
    "VOILUTFunction": ["SIGMOID", "LINEAR_EXACT", "BOGUS"],
    "SpecificCharacterSet": ["ISO_IR 192", "ISO 2022 IR 87", "NOT_A_CHARSET", "ISO_IR 100", "ISO_IR 13\\ISO 2022 IR 87",
                             "GB18030"],
    "StudyInstanceUID": ["", "1." * 40, "not a uid", "1.2\\3.4"],
    "SOPInstanceUID": ["", "1.2.3\\4.5.6"],
    "PixelSpacing": ["0\\0", "-1\\2", "x\\y"],
    "StudyDescription": ["x" * 70_000, "\u00e9\u00e8\u65e5\u672c"],
    "ImageComments": ["y" * 1_000_000],
}
# attributes whose absence a reader or the SCP must notice
_DELETABLE = ("SOPInstanceUID", "StudyInstanceUID", "SOPClassUID", "Rows", "Columns", "BitsAllocated", "BitsStored",
              "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation", "PixelData")
# the elements whose encoding is rewritten in place, as (group, element)
_ELEMENTS = ((0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0100), (0x0028, 0x0002), (0x0028, 0x0004),
             (0x0028, 0x0008), (0x7FE0, 0x0010), (0x0008, 0x0018), (0x0020, 0x000D), (0x0008, 0x0005),
             (0x0010, 0x0010), (0x0028, 0x1052), (0x0028, 0x1050))
_VRS = (b"UN", b"OB", b"SQ", b"LO", b"US", b"UL", b"FD", b"XX", b"\x00\x00", b"DS", b"UT")
_LENGTHS = (0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x10000000, 0, 1, 3, 0x100, 0x401, 0xFFFF, 0xFFFE)
_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
             JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless)


@st.composite
def structured(draw, seeds: list[bytes]) -> bytes:
    """One to three attributes set to contradicting values, or deleted; written by pydicom."""
    ds = pydicom.dcmread(io.BytesIO(draw(st.sampled_from(seeds))), force=True)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 4)) == 0:
            keyword = draw(st.sampled_from(_DELETABLE))
            if keyword in ds:
                delattr(ds, keyword)
            continue
        keyword = draw(st.sampled_from(sorted(_STRUCTURED)))
        value = draw(st.sampled_from(_STRUCTURED[keyword]))
        try:
            setattr(ds, keyword, value)
        except Exception:  # pydicom refuses the value outright: that mutation is not a file
            continue
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=False)
    except Exception:
        out = io.BytesIO(draw(st.sampled_from(seeds)))
    return out.getvalue()


@st.composite
def element_encoding(draw, seeds: list[bytes]) -> bytes:
    """One element of the data set with its VR or its length field rewritten in place."""
    data = bytearray(draw(st.sampled_from(seeds)))
    start = meta_end(bytes(data))
    group, element = draw(st.sampled_from(_ELEMENTS))
    pos = data.find(struct.pack("<HH", group, element), start)
    if pos < 0:
        return bytes(data)
    explicit = data[pos + 4:pos + 6].isalpha()
    if explicit and draw(st.booleans()):
        data[pos + 4:pos + 6] = draw(st.sampled_from(_VRS))
        return bytes(data)
    length = draw(st.sampled_from(_LENGTHS))
    if explicit and bytes(data[pos + 4:pos + 6]) in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
        data[pos + 8:pos + 12] = struct.pack("<I", length)
    elif explicit:
        data[pos + 6:pos + 8] = struct.pack("<H", length & 0xFFFF)
    else:
        data[pos + 4:pos + 8] = struct.pack("<I", length)
    return bytes(data)


@st.composite
def wrong_syntax(draw, seeds: list[bytes]) -> bytes:
    """The file meta announces another transfer syntax than the data set is encoded in."""
    data = draw(st.sampled_from(seeds))
    start = meta_end(data)
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = draw(st.sampled_from([s for s in _SYNTAXES if s != meta.TransferSyntaxUID]))
    out = DicomBytesIO()
    write_file_meta_info(out, meta)
    return data[:128] + b"DICM" + out.getvalue() + data[start:]


@st.composite
def raw(draw, seeds: list[bytes], start: int = 0) -> bytes:
    """Byte mutations from ``start`` on (the C-STORE target keeps the file meta, which the sender
    itself must parse); positions favour the first 2 KB after it, where the header is."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if len(data) <= start + 1:
            break
        end = min(len(data) - 1, start + 2048) if draw(st.integers(0, 9)) < 8 else len(data) - 1
        pos = draw(st.integers(start, end))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "length"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[max(pos, start + 1):]
        else:  # an element length field made absurd
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xfe\xff\xff\x7f", b"\x00\x00\x00\x00",
                                                      b"\x01\x00\x00\x00"]))
    return bytes(data)


def mutated(seeds: list[bytes], start: int = 0):
    """Every kind of mutation; with ``start`` the raw ones leave the bytes before it alone."""
    return st.one_of(raw(seeds, start), structured(seeds), element_encoding(seeds), wrong_syntax(seeds))
