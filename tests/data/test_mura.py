from __future__ import annotations

import pytest

from mura_monai.constants import BODY_PART_INDEX
from mura_monai.data.mura import MuraDatasetError, load_mura_split, mura_datalist, mura_study_datalist


def test_images_carry_study_label_patient_and_body_part(tiny_mura_root):
    split = load_mura_split(tiny_mura_root, "train")
    assert len(split.images) == 8
    first = split.images[0]
    assert first["study"] == "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive"
    assert first["label"] == 1 and first["patient"] == "patient00001"
    assert first["body_part"] == "XR_WRIST" and first["body_part_index"] == BODY_PART_INDEX["XR_WRIST"]
    assert first["image"].endswith("study1_positive/image1.png")
    assert {r["label"] for r in split.images if "negative" in r["study"]} == {0}


def test_studies_group_their_views(tiny_mura_root):
    studies = {"/".join(s["study"].rsplit("/", 2)[-2:]): s for s in mura_study_datalist(tiny_mura_root, "train")}
    assert len(studies) == 4
    assert len(studies["patient00002/study1_negative"]["images"]) == 3
    assert studies["patient00003/study2_positive"]["label"] == 1


def test_root_may_be_the_mura_folder_itself(tiny_mura_root):
    assert len(mura_datalist(tiny_mura_root / "MURA-v1.1", "valid")) == 3


def test_body_part_filter(tiny_mura_root):
    assert {r["body_part"] for r in mura_datalist(tiny_mura_root, "train", body_parts=["XR_HAND"])} == {"XR_HAND"}
    with pytest.raises(ValueError, match="XR_KNEE"):
        mura_datalist(tiny_mura_root, "train", body_parts=["XR_KNEE"])


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(MuraDatasetError, match=str(tmp_path / "nowhere")):
        load_mura_split(tmp_path / "nowhere", "train")


def test_missing_csv_names_the_csv(tiny_mura_root):
    (tiny_mura_root / "MURA-v1.1" / "valid_labeled_studies.csv").unlink()
    with pytest.raises(MuraDatasetError, match="valid_labeled_studies.csv"):
        load_mura_split(tiny_mura_root, "valid")


def test_missing_image_names_the_image(tiny_mura_root):
    missing = tiny_mura_root / "MURA-v1.1/train/XR_WRIST/patient00002/study1_negative/image2.png"
    missing.unlink()
    with pytest.raises(MuraDatasetError, match="image2.png"):
        load_mura_split(tiny_mura_root, "train")


def test_skip_missing_reports_what_was_skipped(tiny_mura_root):
    missing = tiny_mura_root / "MURA-v1.1/train/XR_HAND/patient00003/study1_negative/image1.png"
    missing.unlink()
    split = load_mura_split(tiny_mura_root, "train", skip_missing=True)
    assert split.skipped == [str(missing.resolve())]
    assert len(split.images) == 7
    assert all("patient00003/study1_negative" not in s["study"] for s in split.studies)


def test_malformed_rows_name_file_and_line(tiny_mura_root):
    csv = tiny_mura_root / "MURA-v1.1" / "train_labeled_studies.csv"
    csv.write_text(csv.read_text() + "MURA-v1.1/train/XR_WRIST/patient00009/study1_positive/,maybe\n")
    with pytest.raises(MuraDatasetError, match="train_labeled_studies.csv:5"):
        load_mura_split(tiny_mura_root, "train")


def test_image_of_unlabelled_study_is_an_error(tiny_mura_root):
    csv = tiny_mura_root / "MURA-v1.1" / "valid_image_paths.csv"
    csv.write_text(csv.read_text() + "MURA-v1.1/valid/XR_ELBOW/patient00077/study1_negative/image1.png\n")
    with pytest.raises(MuraDatasetError, match="patient00077"):
        load_mura_split(tiny_mura_root, "valid")
