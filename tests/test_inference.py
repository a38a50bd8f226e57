from __future__ import annotations

from pathlib import Path

import pytest

from mura_monai.inference import body_part_of, collect_inputs, group_studies
from mura_monai.results import StudyResult


@pytest.mark.parametrize(
    "path, meta, expected",
    [
        ("/x/1.dcm", {"BodyPartExamined": "WRIST"}, "XR_WRIST"),
        ("/x/1.dcm", {"BodyPartExamined": "", "StudyDescription": "XR HAND 3+ VIEWS"}, "XR_HAND"),
        ("/x/1.dcm", {"BodyPartExamined": "KNEE"}, "UNKNOWN"),
        ("/MURA-v1.1/valid/XR_ELBOW/patient1/study1_negative/image1.png", {}, "XR_ELBOW"),
        ("/x/image1.png", {}, "UNKNOWN"),
    ],
)
def test_body_part_sources_in_order(path, meta, expected):
    assert body_part_of(Path(path), meta) == expected


def test_group_studies_follows_the_infer_contract():
    images = [
        {"path": "a1", "study": "1.2.3", "body_part": "XR_WRIST", "probability": 0.9},
        {"path": "a2", "study": "1.2.3", "body_part": "UNKNOWN", "probability": 0.5},
        {"path": "b1", "study": "1.2.4", "body_part": "XR_HAND", "probability": 0.2},
        {"path": "b2", "study": "1.2.4", "body_part": "XR_WRIST", "probability": 0.2},
    ]
    a, b = group_studies(images, threshold=0.6)
    assert a.to_json() == {"study": "1.2.3", "body_part": "XR_WRIST", "probability": pytest.approx(0.7), "abnormal": True,
                 "threshold": 0.6, "images": [{"path": "a1", "probability": 0.9}, {"path": "a2", "probability": 0.5}]}
    assert b.body_part == "MIXED:XR_HAND+XR_WRIST" and b.abnormal is False
    assert StudyResult.from_json(a.to_json()) == a  # what is written reads back as it was


def test_collect_inputs_finds_radiographs_and_ignores_the_rest(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "image1.png").write_bytes(b"\x89PNG")
    (tmp_path / "s" / "notes.txt").write_text("x")
    assert collect_inputs([tmp_path]) == [tmp_path / "s" / "image1.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="missing"):
        collect_inputs([tmp_path / "missing"])
