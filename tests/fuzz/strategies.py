"""Mutations of real radiographs for fuzzing the two doors that take bytes from outside.

Seeds are conformance-corpus entries (pydicom-data's CR, re-encoded by pydicom's encoders and
carried over from pydicom's own test files) plus pydicom test files of other layouts. Mutations
are of two kinds: raw bytes (flips, inserts, deletes, truncation, weighted towards the header,
where a parser decides) and structured (one attribute set to a value that contradicts the pixel
data or the standard), because a byte flip rarely lands on Rows or BitsAllocated.

The suite runs a fixed, derandomized number of examples; ``MURA_FUZZ_EXAMPLES=N`` (``make fuzz``)
runs N per target with fresh randomness and keeps what it finds in ``.hypothesis/``.
"""
from __future__ import annotations

import io
import os

import pydicom
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SECRET = "FUZZ^SECRETNAME"  # every seed's patient name: it must never reach an error or a log line

_LONG_RUN = int(os.environ.get("MURA_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(suite_examples: int) -> settings:
    """Short and reproducible in the suite; long and random (with a database) when asked."""
    if _LONG_RUN:
        return settings(max_examples=_LONG_RUN, deadline=None, derandomize=False,
                        suppress_health_check=list(HealthCheck))
    return settings(max_examples=suite_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# attribute -> values that real files have been seen to carry, or that contradict the pixel data
_STRUCTURED = {
    "Rows": [0, 1, 3, 65535, 200],
    "Columns": [0, 1, 7, 65535, 200],
    "BitsAllocated": [0, 1, 8, 12, 32, 64],
    "BitsStored": [0, 1, 7, 17, 64],
    "HighBit": [0, 31, 64],
    "SamplesPerPixel": [0, 2, 3, 4],
    "PixelRepresentation": [0, 1, 2],
    "PhotometricInterpretation": ["MONOCHROME3", "RGB", "YBR_FULL_422", "PALETTE COLOR", "", "monochrome2"],
    "NumberOfFrames": ["0", "2", "-1", "abc", "100000"],
    "PlanarConfiguration": [1, 7],
    "RescaleSlope": ["0", "-1", "1e308", "nan"],
    "RescaleIntercept": ["-1e308", "inf", "3"],
    "WindowCenter": ["0", "-5", "nan", "1e30"],
    "WindowWidth": ["0", "-1", "1e-30", "inf"],
    "VOILUTFunction": ["SIGMOID", "LINEAR_EXACT", "BOGUS"],
    "SpecificCharacterSet": ["ISO_IR 192", "ISO 2022 IR 87", "NOT_A_CHARSET", "ISO_IR 100"],
    "StudyInstanceUID": ["", "1." * 40, "not a uid"],
    "SOPInstanceUID": [""],
    "PixelSpacing": ["0\\0", "-1\\2", "x\\y"],
}


@st.composite
def structured(draw, seeds: list[bytes]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(draw(st.sampled_from(seeds))), force=True)
    for _ in range(draw(st.integers(1, 3))):
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
    return st.one_of(raw(seeds, start), structured(seeds)) if start == 0 else raw(seeds, start)
