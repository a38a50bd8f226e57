"""The radiograph reader on mutated real files: every input ends in an image in [0, 1] or in
RadiographReadError (the documented error), in bounded time, and neither the error message nor
a log line of the project's code holds the patient's name or ID.

pydicom's own validation warnings are not held to that yet: when a lying length makes a UID
swallow the elements after it, pydicom quotes the whole value, name included, while it parses
the file (see test_pydicom_validation_warning_quotes_what_a_lying_length_swallowed)."""
from __future__ import annotations

import io
import logging
import struct
import time

import numpy as np
import pydicom
import pytest
from hypothesis import given

from mura_monai.data.radiograph_reader import RadiographReadError, read_radiograph
from tests.fuzz.strategies import SECRETS, fuzz_settings, meta_end, mutated, report

# a read of a 128 px seed takes milliseconds; one that takes this long decodes what a header
# claims instead of what the file holds (the 65535 x 65535 RLE header took 30 s)
SLOW_READ_S = 10.0


def check_reader(data: bytes, path, caplog) -> str:
    """``"image"`` or ``"refused"``; any other outcome fails the caller."""
    path.write_bytes(data)
    caplog.clear()
    started = time.monotonic()
    try:
        image, meta = read_radiograph(path)
        outcome = "image"
    except RadiographReadError as exc:
        assert not any(s in str(exc) for s in SECRETS), str(exc)
        outcome = "refused"
    assert time.monotonic() - started < SLOW_READ_S
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("mura_monai")]
    assert not any(s in message for message in ours for s in SECRETS), ours
    if outcome == "image":
        assert image.dtype == np.float32 and image.ndim == 2 and image.size > 0
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
        assert tuple(meta["original_shape"]) == image.shape
    return outcome


def test_reader_survives_mutated_radiographs(reader_seeds, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    outcomes = []

    @fuzz_settings(1500)
    @given(data=mutated(reader_seeds))
    def run(data):
        outcomes.append(check_reader(data, tmp_path / "fuzzed.dcm", caplog))

    started = time.monotonic()
    run()
    report("reader", {"executions": len(outcomes), "images": outcomes.count("image"),
                      "refused": outcomes.count("refused"), "seconds": round(time.monotonic() - started)})
    # the run exercised both ends: mutations that still read, and ones the reader refused
    assert outcomes.count("image") > 0 and outcomes.count("refused") > 0


def test_header_claiming_a_huge_image_is_refused_before_decoding(reader_seeds, tmp_path, caplog):
    """Found by the structured mutations: Rows and Columns of 65535 on an RLE file made pydicom's
    decoder allocate what the header claimed (8.3 GB, 30 s) before failing."""
    for seed in reader_seeds[:6]:
        ds = pydicom.dcmread(io.BytesIO(seed))
        ds.Rows = ds.Columns = 65535
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        assert check_reader(out.getvalue(), tmp_path / "huge.dcm", caplog) == "refused"
        with pytest.raises(RadiographReadError, match="larger than any radiograph|do not match"):
            read_radiograph(tmp_path / "huge.dcm")


@pytest.mark.parametrize("vr", [b"UI", b"IS"])
def test_patient_name_under_a_wrong_vr_is_not_logged(reader_seeds, tmp_path, caplog, vr):
    """Found by the element-encoding mutations: with Patient Name's VR rewritten (UI, IS, ...),
    the scrubber that keeps names out of error messages converted the name to compare it, and
    pydicom's validation logged a warning quoting it ("Invalid value for VR UI: 'FUZZ^SECRET...'")
    into the listener's log. It now compares the stored bytes."""
    caplog.set_level(logging.INFO)
    ds = pydicom.dcmread(io.BytesIO(reader_seeds[0]))
    ds.Rows = 7  # an error, so the scrubber runs
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = bytearray(out.getvalue())
    name = data.find(struct.pack("<HH", 0x0010, 0x0010), meta_end(bytes(data)))
    assert data[name + 4:name + 6] == b"PN"
    data[name + 4:name + 6] = vr
    assert check_reader(bytes(data), tmp_path / "named.dcm", caplog) == "refused"


def test_pydicom_validation_warning_quotes_what_a_lying_length_swallowed(reader_seeds, tmp_path, caplog, recwarn):
    """Found by the raw mutations: the file meta's Transfer Syntax UID given a length that runs
    into the data set; pydicom converts it to learn the encoding and warns with the value quoted:
    "Invalid value for VR UI: '1.2.840.10008.1.2.1...FUZZ^SECRETNAME...'"."""
    caplog.set_level(logging.INFO)
    data = bytearray(reader_seeds[0])
    syntax = data.find(struct.pack("<HH", 0x0002, 0x0010))
    data[syntax + 6:syntax + 8] = struct.pack("<H", data.find(b"SECRETPID4711") - syntax)
    (tmp_path / "lying.dcm").write_bytes(bytes(data))
    with pytest.raises(RadiographReadError):
        read_radiograph(tmp_path / "lying.dcm")
    assert not any(s in r.getMessage() for r in caplog.records for s in SECRETS)
    assert not any(s in str(w.message) for w in recwarn for s in SECRETS)  # nor in a printed warning
