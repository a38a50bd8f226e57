"""Every corpus entry through the reader and the DICOM writers: the SR and each heatmap secondary
capture pass dciodvfy and carry the patient, study, side and references that belong in them."""
from __future__ import annotations

import pydicom
import pytest

from mura_monai.data.radiograph_reader import RadiographReadError, read_radiograph, require_plain_radiograph
from mura_monai.dicom_out import UNPAIRED_BODY_PARTS, read_sr_result, write_dicom_outputs
from tests.conformance.corpus import SCORED_FEATURES
from tests.dicom_out.conftest import ALGORITHM, make_study, overlay_for
from tests.dicom_out.dciodvfy import dciodvfy_errors


def test_corpus_covers_every_variation(corpus):
    """The corpus is the contract's scope: each dimension the README names appears, with its values."""
    seen: dict[str, set] = {}
    for entry in corpus:
        for key, value in entry.features.items():
            seen.setdefault(key, set()).add(value)
    assert set(SCORED_FEATURES) <= set(seen)
    assert {8, 10, 12, 14, 16} <= seen["bits"]
    assert {"L", "R", "U", "B", "absent"} <= seen["image_laterality"]
    assert {"RLE", "JPEG-LS lossless", "JPEG 2000 lossless", "JPEG lossless SV1", "deflate"} <= seen["syntax"]
    assert {"ISO_IR 100", "ISO_IR 192"} <= seen["charset"]
    assert {"MR", "CT", "US", "OT", "MG"} <= seen["modality"]
    assert sum(e.scored for e in corpus) >= 40 and sum(not e.scored for e in corpus) >= 5


def test_refused_entries_get_the_documented_reason(corpus):
    for entry in (e for e in corpus if not e.scored):
        with pytest.raises(RadiographReadError) as caught:
            _, meta = read_radiograph(entry.path)
            require_plain_radiograph(meta, entry.path)
        assert entry.refusal in caught.value.reason, entry.name
        source = pydicom.dcmread(entry.path, stop_before_pixels=True)
        assert str(source.PatientName or "x") not in caught.value.reason  # no patient data in the reason


def _expected_side(source) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(source.get(keyword) or "").upper()
        if value:
            return value if value in ("L", "R", "B") else None
    return None


def test_outputs_are_valid_for_every_scored_entry(corpus, tmp_path):
    failures = {}
    for entry in (e for e in corpus if e.scored):
        image, _ = read_radiograph(entry.path)
        assert image.min() >= 0 and image.max() <= 1 and image.std() > 0, entry.name
        source = pydicom.dcmread(entry.path)
        paths = write_dicom_outputs(make_study([source]), [source], {source.SOPInstanceUID: overlay_for(source)},
                                    ALGORITHM, tmp_path / entry.name)
        errors = {p.name: dciodvfy_errors(p) for p in paths}
        if any(errors.values()):
            failures[entry.name] = errors
            continue
        sr, sc = (pydicom.dcmread(p) for p in paths)
        for out in (sr, sc):
            assert out.StudyInstanceUID == source.StudyInstanceUID, entry.name
            assert str(out.get("PatientName") or "") == str(source.get("PatientName") or ""), entry.name
            assert str(out.get("PatientID") or "") == str(source.get("PatientID") or ""), entry.name
            assert str(out.get("AccessionNumber") or "") == str(source.get("AccessionNumber") or ""), entry.name
        result = read_sr_result(sr)
        assert result["referenced_sop_instance_uids"] == [source.SOPInstanceUID], entry.name
        assert result["laterality"] == _expected_side(source), entry.name
        assert [r.ReferencedSOPInstanceUID for r in sc.SourceImageSequence] == [source.SOPInstanceUID]
        side = _expected_side(source)
        part = str(source.get("BodyPartExamined") or "").upper()
        if side in ("L", "R"):
            assert sc.Laterality == side, entry.name
        elif part in UNPAIRED_BODY_PARTS:
            assert "Laterality" not in sc, entry.name
        else:
            assert "Laterality" in sc and not sc.Laterality, entry.name  # Type 2: known to be unknown
    assert failures == {}
