"""Heatmap Secondary Captures and the per-study output folder: valid per dciodvfy, RGB, pixel-exact,
in the source's study and patient, referencing the source image."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from mura_monai.dicom_out import SC_SERIES_DESCRIPTION, build_heatmap_sc, read_sr_result, write_dicom_outputs
from tests.dicom_out.conftest import ALGORITHM, make_study, overlay_for
from tests.dicom_out.dciodvfy import dciodvfy_errors

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _check_sc(ds, source, overlay, series_uid):
    assert ds.SOPClassUID == SECONDARY_CAPTURE
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3 and ds.BitsAllocated == 8
    assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns)
    np.testing.assert_array_equal(ds.pixel_array, overlay)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientSex", "PatientAge", "PatientBirthDate"):
        assert str(ds.get(keyword) or "") == str(source.get(keyword) or ""), keyword  # Type 2: empty = absent
    assert ds.SeriesInstanceUID == series_uid != source.SeriesInstanceUID
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.SeriesDescription == SC_SERIES_DESCRIPTION and "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    for seq in (ds.ReferencedImageSequence, ds.SourceImageSequence):
        assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in seq] == \
            [(source.SOPClassUID, source.SOPInstanceUID)]
    assert list(ds.get("PatientOrientation") or []) == list(source.get("PatientOrientation") or [])


def _round_trip(source, tmp_path, name="sc.dcm"):
    overlay, series_uid = overlay_for(source), generate_uid()
    path = tmp_path / name
    build_heatmap_sc(source, overlay, series_instance_uid=series_uid).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    _check_sc(ds, source, overlay, series_uid)
    return ds


@pytest.mark.parametrize("kind", ["dx_sources", "rg1_sources", "rg3_sources"])
def test_heatmap_sc(kind, request, tmp_path):
    """DX MONOCHROME2 (oblique and missing orientation), CR MONOCHROME1 uncompressed and JPEG 2000."""
    for i, source in enumerate(request.getfixturevalue(kind)[:2]):
        ds = _round_trip(source, tmp_path, f"sc{i}.dcm")
        side = source.get("ImageLaterality") or source.get("Laterality")
        assert ds.get("Laterality") == (side if side in ("L", "R") else None)


def test_heatmap_sc_generated_sources(generated_studies, tmp_path):
    seen = set()
    for i, (_, sources) in enumerate(generated_studies):
        source = sources[0]
        seen.add((source.Modality, source.PhotometricInterpretation, source.file_meta.TransferSyntaxUID.is_compressed))
        _round_trip(source, tmp_path, f"sc{i}.dcm")
    assert {m for m, _, _ in seen} == {"CR", "DX"} and {c for _, _, c in seen} == {True, False}


def test_overlay_of_wrong_size_is_rejected(dx_sources):
    source = dx_sources[0]
    with pytest.raises(ValueError, match="overlay"):
        build_heatmap_sc(source, overlay_for(source)[:-1], series_instance_uid=generate_uid())
    with pytest.raises(ValueError, match="overlay"):
        build_heatmap_sc(source, overlay_for(source).astype(np.uint16), series_instance_uid=generate_uid())


def test_write_dicom_outputs(rg1_sources, tmp_path):
    sources = rg1_sources
    overlays = {s.SOPInstanceUID: overlay_for(s) for s in sources[:2]}  # the third image has no heatmap
    study = make_study(sources)
    paths = write_dicom_outputs(study, sources, overlays, ALGORITHM, tmp_path / "out")
    folder = tmp_path / "out" / sources[0].StudyInstanceUID
    assert paths == [folder / "sr.dcm", folder / "sc_1.dcm", folder / "sc_2.dcm"]
    assert all(dciodvfy_errors(p) == [] for p in paths)
    sr = pydicom.dcmread(paths[0])
    assert read_sr_result(sr)["images"] == pytest.approx({im["sop_instance_uid"]: im["probability"]
                                                          for im in study["images"]})
    scs = [pydicom.dcmread(p) for p in paths[1:]]
    for sc, source in zip(scs, sources):
        _check_sc(sc, source, overlays[source.SOPInstanceUID], scs[0].SeriesInstanceUID)
    assert [sc.InstanceNumber for sc in scs] == [1, 2]
    assert sr.SeriesInstanceUID != scs[0].SeriesInstanceUID

    again = write_dicom_outputs(study, sources, {}, ALGORITHM, tmp_path / "out", predecessor=sr)
    assert again == [folder / "sr.dcm"]
    new = pydicom.dcmread(again[0])
    assert new.SOPInstanceUID != sr.SOPInstanceUID and new.SeriesInstanceUID == sr.SeriesInstanceUID
    assert new.InstanceNumber == sr.InstanceNumber + 1
    assert read_sr_result(new)["predecessors"] == [sr.SOPInstanceUID]


@pytest.mark.parametrize("side, part, expected", [
    ("U", "HUMERUS", ""), ("B", "HUMERUS", ""), (None, "HUMERUS", ""), (None, None, ""), ("L", "HUMERUS", "L"),
    ("U", "CHEST", None)])
def test_general_series_laterality_follows_the_body_part(dx_sources, tmp_path, side, part, expected):
    """Type 2C: a paired or unnamed part needs Laterality (empty when the side is U, B or unsaid),
    an unpaired one must not have it. A DX humerus marked U failed dciodvfy before this was kept."""
    source = dx_sources[0]
    for keyword, value in (("ImageLaterality", side), ("BodyPartExamined", part)):
        if value is None:
            del source[keyword]
        else:
            setattr(source, keyword, value)
    ds = _round_trip(source, tmp_path)
    assert ds.get("Laterality") == expected
