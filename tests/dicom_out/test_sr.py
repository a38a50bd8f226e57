"""The TID 1500 SR: valid per dciodvfy, in the source study, and every value of the result readable
back, both through :func:`read_sr_result` and straight from the content tree."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.sr.codedict import codes

from mura_monai.constants import BODY_PARTS
from mura_monai.dicom_out import SR_SERIES_DESCRIPTION, build_sr, read_sr_result
from mura_monai.dicom_out.sr import BODY_PART_CODES, OPERATING_POINTS
from tests.dicom_out.conftest import ALGORITHM, make_study
from tests.dicom_out.dciodvfy import dciodvfy_errors

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _walk(item):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def _code_values(ds, concept: str) -> list[str]:
    """Coded values of every CODE item named ``concept`` anywhere in the tree."""
    return [i.ConceptCodeSequence[0].CodeValue for i in _walk(ds)
            if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == concept]


def _write_and_read(sr, tmp_path, name="sr.dcm"):
    path = tmp_path / name
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    return pydicom.dcmread(path)


def _check_result(ds, study, sources):
    got = read_sr_result(ds)
    uids = [s.SOPInstanceUID for s in sources]
    assert got["study"] == sources[0].StudyInstanceUID
    assert got["abnormal"] is study["abnormal"]
    assert got["finding"] == ("abnormal" if study["abnormal"] else "normal")
    assert got["probability"] == pytest.approx(study["probability"])
    assert got["members"] == pytest.approx(study["members"])
    assert got["threshold"] == pytest.approx(study["threshold"])
    assert got["operating_point"] == study["operating_point"]
    assert got["uncertain"] is study["uncertain"]
    assert got["uncertainty"] == pytest.approx(study["uncertainty"])
    assert got["disagreement"] == pytest.approx(study["disagreement"])
    assert got["body_part"] == study["body_part"]
    assert got["images"] == pytest.approx({im["sop_instance_uid"]: im["probability"] for im in study["images"]})
    for im in study["images"]:
        assert got["image_members"][im["sop_instance_uid"]] == pytest.approx(im["members"])
    assert sorted(got["referenced_sop_instance_uids"]) == sorted(uids)
    assert got["algorithm"]["name"] == ALGORITHM["name"] and got["algorithm"]["version"] == ALGORITHM["version"]
    for m in ALGORITHM["members"]:
        assert any(m["name"] in p and m["version"] in p for p in got["algorithm"]["parameters"])
    return got


def _check_header(ds, sources):
    src = sources[0]
    assert ds.SOPClassUID == COMPREHENSIVE_SR and ds.Modality == "SR"
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    assert ds.SeriesDescription == SR_SERIES_DESCRIPTION and "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    for keyword in ("PatientID", "PatientName", "PatientSex", "PatientAge"):
        assert ds.get(keyword) == src.get(keyword), keyword
    evidence = {ref.ReferencedSOPInstanceUID for item in ds.CurrentRequestedProcedureEvidenceSequence
                for series in item.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {s.SOPInstanceUID for s in sources}
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == ALGORITHM["manufacturer"]]
    assert len(ours) == 1 and ours[0].ManufacturerModelName == ALGORITHM["name"]
    versions = list(ours[0].SoftwareVersions)
    assert f"{ALGORITHM['name']} {ALGORITHM['version']}" in versions
    assert all(f"{m['name']} {m['version']}" in versions for m in ALGORITHM["members"])


@pytest.mark.parametrize("kind", ["dx_sources", "rg1_sources", "rg3_sources"])
def test_abnormal_study_round_trips(kind, request, tmp_path):
    sources = request.getfixturevalue(kind)
    study = make_study(sources)
    ds = _write_and_read(build_sr(study, sources, ALGORITHM), tmp_path)
    _check_header(ds, sources)
    _check_result(ds, study, sources)
    assert _code_values(ds, "121071") == ["263654008"]  # Finding = Abnormal (SCT)
    assert _code_values(ds, "363698007")[0] == "8205005"  # Finding site = wrist region


def test_normal_certain_study(dx_sources, tmp_path):
    study = make_study(dx_sources, abnormal=False, probability=0.12, uncertain=False,
                       operating_point="high_sensitivity")
    ds = _write_and_read(build_sr(study, dx_sources, ALGORITHM), tmp_path)
    got = _check_result(ds, study, dx_sources)
    assert got["finding"] == "normal" and got["uncertain"] is False
    assert _code_values(ds, "121071") == ["17621005"]  # Normal (SCT)
    assert got["laterality"] == "R"  # both DX views say ImageLaterality R


@pytest.mark.parametrize("body_part", [*BODY_PARTS, "UNKNOWN"])
def test_body_part_finding_site(body_part, rg3_sources):
    study = make_study(rg3_sources, body_part=body_part)
    ds = build_sr(study, rg3_sources, ALGORITHM)
    sites = [i.ConceptCodeSequence[0] for i in _walk(ds) if i.ConceptNameCodeSequence[0].CodeValue == "363698007"]
    expected = {"XR_ELBOW": "127949000", "XR_FINGER": "7569003", "XR_FOREARM": "14975008", "XR_HAND": "85562004",
                "XR_HUMERUS": "85050009", "XR_SHOULDER": "16982005", "XR_WRIST": "8205005"}.get(body_part)
    if expected is None:
        assert sites == []
    else:
        assert sites and all(s.CodeValue == expected and s.CodingSchemeDesignator == "SCT" for s in sites)
    assert read_sr_result(ds)["body_part"] == body_part


def test_finding_site_codes_match_pydicom_dictionary():
    by_value = {getattr(codes.SCT, n).value: getattr(codes.SCT, n) for n in codes.SCT.dir()}
    for part, concept in BODY_PART_CODES.items():
        if concept.value == "127949000":  # elbow region: not in pydicom's dictionary
            continue
        assert concept.value in by_value, part
        assert by_value[concept.value].scheme_designator == concept.scheme_designator == "SCT"


@pytest.mark.parametrize("operating_point", sorted(OPERATING_POINTS))
def test_operating_points(operating_point, rg1_sources):
    study = make_study(rg1_sources, operating_point=operating_point)
    assert read_sr_result(build_sr(study, rg1_sources, ALGORITHM))["operating_point"] == operating_point


def test_generated_studies(generated_studies, tmp_path):
    assert {s.Modality for _, srcs in generated_studies for s in srcs} == {"CR", "DX"}
    for i, (body_part, sources) in enumerate(generated_studies):
        study = make_study(sources, body_part=body_part, abnormal=bool(i % 2))
        ds = _write_and_read(build_sr(study, sources, ALGORITHM), tmp_path, f"sr{i}.dcm")
        _check_header(ds, sources)
        _check_result(ds, study, sources)


def test_predecessor_is_referenced_in_same_series(rg1_sources, tmp_path):
    first = build_sr(make_study(rg1_sources[:2]), rg1_sources[:2], ALGORITHM)
    second_study = make_study(rg1_sources, probability=0.9)
    second = _write_and_read(build_sr(second_study, rg1_sources, ALGORITHM, instance_number=2, predecessor=first),
                             tmp_path)
    assert "PredecessorDocumentsSequence" not in first
    refs = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [first.SOPInstanceUID]
    assert second.SeriesInstanceUID == first.SeriesInstanceUID and second.SOPInstanceUID != first.SOPInstanceUID
    assert second.InstanceNumber == 2
    got = _check_result(second, second_study, rg1_sources)
    assert got["predecessors"] == [first.SOPInstanceUID]


def test_sources_are_not_modified(dx_sources):
    build_sr(make_study(dx_sources), dx_sources, ALGORITHM)
    assert all("StudyID" not in s and "AccessionNumber" not in s for s in dx_sources)


def test_image_not_among_sources_is_rejected(dx_sources):
    study = make_study(dx_sources)
    study["images"][0]["sop_instance_uid"] = "1.2.3.4"
    with pytest.raises(ValueError, match="not among the source"):
        build_sr(study, dx_sources, ALGORITHM)


def test_sources_from_two_studies_are_rejected(dx_sources, rg3_sources):
    with pytest.raises(ValueError, match="one study"):
        build_sr(make_study(dx_sources), [*dx_sources, rg3_sources[0]], ALGORITHM)
