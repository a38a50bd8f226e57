"""The radiograph reader on mutated real files: every input ends in an image in [0, 1] or in
RadiographReadError (the documented error), whose message holds no patient data."""
from __future__ import annotations

import numpy as np
from hypothesis import given

from mura_monai.data.radiograph_reader import RadiographReadError, read_radiograph
from tests.fuzz.strategies import SECRET, fuzz_settings, mutated


def check_reader(data: bytes, path) -> str:
    """``"image"`` or ``"refused"``; any other outcome fails the caller."""
    path.write_bytes(data)
    try:
        image, meta = read_radiograph(path)
    except RadiographReadError as exc:
        assert SECRET.split("^")[1] not in str(exc), str(exc)
        return "refused"
    assert image.dtype == np.float32 and image.ndim == 2 and image.size > 0
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    assert tuple(meta["original_shape"]) == image.shape
    return "image"


def test_reader_survives_mutated_radiographs(reader_seeds, tmp_path):
    outcomes = []

    @fuzz_settings(300)
    @given(data=mutated(reader_seeds))
    def run(data):
        outcomes.append(check_reader(data, tmp_path / "fuzzed.dcm"))

    run()
    # the run exercised both ends: mutations that still read, and ones the reader refused
    assert outcomes.count("image") > 0 and outcomes.count("refused") > 0


def test_header_claiming_a_huge_image_is_refused_before_decoding(reader_seeds, tmp_path):
    """One of the structured mutations, kept as a case: Rows and Columns of 65535 on an RLE file
    made pydicom's decoder allocate what the header claimed (8.3 GB, 30 s) before failing."""
    import io

    import pydicom

    for seed in reader_seeds[:6]:
        ds = pydicom.dcmread(io.BytesIO(seed))
        ds.Rows = ds.Columns = 65535
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        (tmp_path / "huge.dcm").write_bytes(out.getvalue())
        try:
            read_radiograph(tmp_path / "huge.dcm")
        except RadiographReadError as exc:
            assert "larger than any radiograph" in str(exc) or "do not match" in str(exc)
        else:
            raise AssertionError("a 65535 x 65535 header was read")
