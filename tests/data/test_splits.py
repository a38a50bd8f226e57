"""Patient-level hold-out split of the MURA training split, stratified by body part."""
from __future__ import annotations

import pytest

from mura_monai.constants import BODY_PARTS
from mura_monai.data.splits import holdout_split, select_body_part


def _datalist(patients_per_part: dict[str, int], views: int = 3) -> list[dict]:
    """``views`` images per patient; patient ids unique across parts, e.g. ``XR_HAND-p03``."""
    records = []
    for part, n in patients_per_part.items():
        for p in range(n):
            for v in range(views):
                patient = f"{part}-p{p:02d}"
                records.append({
                    "image": f"/{part}/{patient}/study1/image{v}.png", "patient": patient,
                    "study": f"{patient}/study1", "body_part": part, "label": (p + v) % 2,
                })
    return records


def _patients(records: list[dict]) -> set[str]:
    return {r["patient"] for r in records}


def _patients_of(records: list[dict], part: str) -> set[str]:
    return {r["patient"] for r in records if r["body_part"] == part}


def test_no_patient_on_both_sides_and_every_image_kept():
    data = _datalist({"XR_HAND": 10, "XR_WRIST": 7, "XR_ELBOW": 3})
    train, held = holdout_split(data, 0.2, seed=0)
    assert _patients(train).isdisjoint(_patients(held))
    assert len(train) + len(held) == len(data)
    assert sorted(r["image"] for r in train + held) == sorted(r["image"] for r in data)
    # a patient's views stay together: each held patient has all 3 images on the held side
    assert all(sum(r["patient"] == p for r in held) == 3 for p in _patients(held))


def test_patient_with_views_in_two_parts_stays_on_one_side():
    data = _datalist({"XR_HAND": 6, "XR_WRIST": 6})
    # patient XR_HAND-p00 also has a wrist study (counted in the stratum of their first image, hand)
    data.append({"image": "/XR_WRIST/XR_HAND-p00/study9/image0.png", "patient": "XR_HAND-p00",
                 "study": "XR_HAND-p00/study9", "body_part": "XR_WRIST", "label": 0})
    for seed in range(10):
        train, held = holdout_split(data, 0.5, seed=seed)
        assert _patients(train).isdisjoint(_patients(held)), seed


def test_fraction_is_taken_per_body_part():
    data = _datalist({part: 10 for part in BODY_PARTS})
    train, held = holdout_split(data, 0.2, seed=1)
    for part in BODY_PARTS:
        assert len(_patients_of(held, part)) == 2, part
        assert len(_patients_of(train, part)) == 8, part


def test_every_part_with_two_patients_gets_a_held_out_patient():
    counts = {"XR_HAND": 2, "XR_WRIST": 3, "XR_ELBOW": 1, "XR_FINGER": 40}
    train, held = holdout_split(_datalist(counts), 0.2, seed=0)
    assert len(_patients_of(held, "XR_HAND")) == 1 and len(_patients_of(train, "XR_HAND")) == 1
    assert len(_patients_of(held, "XR_WRIST")) == 1  # round(0.6) = 1
    assert len(_patients_of(held, "XR_FINGER")) == 8
    # a single patient cannot be split: it trains, and nothing of the part is held out
    assert _patients_of(held, "XR_ELBOW") == set() and len(_patients_of(train, "XR_ELBOW")) == 1


def test_a_large_fraction_still_leaves_a_training_patient():
    train, held = holdout_split(_datalist({"XR_HAND": 3}), 0.9, seed=0)
    assert len(_patients(train)) == 1 and len(_patients(held)) == 2


def test_deterministic_in_seed_and_different_between_seeds():
    data = _datalist({"XR_HAND": 30, "XR_WRIST": 30})
    first = holdout_split(data, 0.2, seed=5)
    assert holdout_split(data, 0.2, seed=5) == first
    assert holdout_split(list(data), 0.2, seed=5)[1] == first[1]
    others = [_patients(holdout_split(data, 0.2, seed=s)[1]) for s in (6, 7)]
    assert any(o != _patients(first[1]) for o in others)
    # the input order of the records does not matter, only the seed
    assert _patients(holdout_split(data[::-1], 0.2, seed=5)[1]) == _patients(first[1])


def test_fraction_zero_holds_nothing_out():
    data = _datalist({"XR_HAND": 5, "XR_WRIST": 2})
    train, held = holdout_split(data, 0.0, seed=0)
    assert held == [] and train == data


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_invalid_fraction_raises(fraction):
    with pytest.raises(ValueError, match="fraction"):
        holdout_split(_datalist({"XR_HAND": 5}), fraction, seed=0)


def test_without_stratification_the_fraction_is_global():
    data = _datalist({"XR_HAND": 10, "XR_WRIST": 10})
    train, held = holdout_split(data, 0.25, seed=0, stratify_key=None)
    assert len(_patients(held)) == 5 and len(_patients(train)) == 15


def test_select_body_part():
    data = _datalist({"XR_HAND": 2, "XR_WRIST": 3}, views=1)
    assert select_body_part(data, "router") == data
    assert select_body_part(data, None) == data
    assert select_body_part(data, "router") is not data  # a copy
    wrist = select_body_part(data, "XR_WRIST")
    assert len(wrist) == 3 and {r["body_part"] for r in wrist} == {"XR_WRIST"}
    assert select_body_part(data, "XR_ELBOW") == []
