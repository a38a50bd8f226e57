"""Age and sex: from DICOM headers or a MURA root's patient_metadata.csv, into the network's input vector."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_monai.data import PatientMetadatad, load_patient_metadata, mura_datalist
from mura_monai.data.patient_metadata import dicom_age_years, image_metadata, metadata_vector
from mura_monai.data.synthetic import plan_dataset, plan_demographics


@pytest.mark.parametrize("value, years", [("045Y", 45.0), ("006M", 0.5), ("026W", 0.4983), ("365D", 0.9993),
                                          ("", None), ("45", None), ("Y045", None), (None, None)])
def test_dicom_age_string(value, years):
    got = dicom_age_years(value)
    assert got == pytest.approx(years, abs=1e-3) if years is not None else got is None


def test_metadata_vector_encodes_unknowns_explicitly():
    assert metadata_vector(45.0, "M").tolist() == pytest.approx([0.45, 0.0, 1.0, 0.0])
    assert metadata_vector(None, "f").tolist() == [0.0, 1.0, 0.0, 1.0]
    assert metadata_vector(float("nan"), "O").tolist() == [0.0, 1.0, 0.0, 0.0]


def test_synthetic_patients_with_abnormal_studies_are_older():
    demographics = plan_demographics(plan_dataset(300, seed=0))
    plan = plan_dataset(300, seed=0)
    abnormal = {s.patient for s in plan if s.label}
    older = np.mean([age for p, (_, age) in demographics.items() if p in abnormal])
    younger = np.mean([age for p, (_, age) in demographics.items() if p not in abnormal])
    assert older - younger > 8
    assert {sex for sex, _ in demographics.values()} == {"M", "F"}


def test_root_metadata_joins_the_datalist_and_the_dicom_headers_agree(synth_root):
    table = load_patient_metadata(synth_root)
    records = mura_datalist(synth_root, "valid")
    assert all(r["age"] == table[r["patient"]]["age"] and r["sex"] == table[r["patient"]]["sex"] for r in records)
    # the synthetic DICOM copy of a study carries the same patient's sex and (about) the same age
    from mura_monai.data import read_radiograph

    dicom = sorted((synth_root.parent / "dicom").rglob("*.dcm"))[0]
    _, meta = read_radiograph(dicom)
    patient = dicom.parts[-3]  # dicom/<split>/patientNNNNN/studyN/imageN.dcm
    assert meta["PatientSex"] == table[patient]["sex"]
    assert abs(dicom_age_years(meta["PatientAge"]) - table[patient]["age"]) <= 2


def test_transform_prefers_the_root_then_the_header(synth_root):
    record = mura_datalist(synth_root, "valid")[0]
    image = torch.zeros(1, 4, 4)
    out = PatientMetadatad()({"image": image, "age": record["age"], "sex": record["sex"]})
    assert out["metadata"].tolist() == pytest.approx(metadata_vector(record["age"], record["sex"]).tolist())
    from monai.data import MetaTensor

    headed = MetaTensor(image, meta={"PatientAge": "070Y", "PatientSex": "F"})
    out = PatientMetadatad()({"image": headed, "age": float("nan"), "sex": ""})
    assert out["metadata"].tolist() == pytest.approx([0.7, 0.0, 0.0, 1.0])
    png = record["image"]
    assert image_metadata(png, {}).tolist() == pytest.approx(metadata_vector(record["age"], record["sex"]).tolist())


def test_malformed_metadata_file_names_file_and_line(tiny_mura_root):
    path = tiny_mura_root / "MURA-v1.1" / "patient_metadata.csv"
    path.write_text("patient,age,sex\npatient00001,forty,M\n")
    with pytest.raises(ValueError, match=r"patient_metadata.csv:2: age is not a number"):
        load_patient_metadata(tiny_mura_root)
    path.write_text("id,years\n")
    with pytest.raises(ValueError, match="header must name patient, age and sex"):
        load_patient_metadata(tiny_mura_root)
    path.write_text("patient,age,sex\npatient00001,,\n")
    records = mura_datalist(tiny_mura_root, "train")
    assert np.isnan(records[0]["age"]) and records[0]["sex"] == ""
