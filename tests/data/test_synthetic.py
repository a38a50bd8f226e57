"""The synthetic MURA-like generator: layout, determinism, statistics, confounders, DICOM."""
from __future__ import annotations

import csv
import hashlib
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from mura_monai.constants import BODY_PARTS, DICOM_BODY_PART
from mura_monai.data.synthetic import generate_mura_root, plan_dataset, render_study, study_specs
from mura_monai.data.synthetic_dicom import (
    CR_IMAGE_STORAGE,
    DX_IMAGE_STORAGE_PRESENTATION,
    INDEX_COLUMNS,
    pixel_mapping,
)

IMAGE_RE = re.compile(r"^MURA-v1\.1/(train|valid)/(XR_[A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/image(\d+)\.png$")
STUDY_RE = re.compile(r"^MURA-v1\.1/(train|valid)/(XR_[A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/,([01])$")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    summary = generate_mura_root(base / "root", 24, seed=5, dicom_dir=base / "dicom")
    return base, summary


def _lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    return raw.decode("ascii").splitlines()


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
def test_csv_format_and_files(small):
    base, summary = small
    root = base / "root"
    mura = root / "MURA-v1.1"
    assert summary["mura_dir"] == str(mura)
    seen_patients: dict[str, str] = {}
    for split in ("train", "valid"):
        images = _lines(mura / f"{split}_image_paths.csv")
        studies = _lines(mura / f"{split}_labeled_studies.csv")
        assert images and studies
        assert summary["splits"][split]["images"] == len(images)
        assert summary["splits"][split]["studies"] == len(studies)
        study_set = set()
        for line in studies:
            m = STUDY_RE.match(line)
            assert m, line
            assert m.group(1) == split
            assert (m.group(5) == "positive") == (m.group(6) == "1")
            study_set.add(line.rsplit(",", 1)[0])
        assert len(study_set) == len(studies)
        per_study = Counter()
        for line in images:
            m = IMAGE_RE.match(line)
            assert m, line
            assert m.group(1) == split
            path = root / line
            assert path.is_file(), line
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.ndim == 2 and img.dtype == np.uint8
            study = line.rsplit("/", 1)[0] + "/"
            assert study in study_set
            per_study[study] += 1
            seen_patients.setdefault(m.group(3), split)
            assert seen_patients[m.group(3)] == split, "a patient is in one split only"
        assert set(per_study) == study_set
        for study, n in per_study.items():
            assert 1 <= n <= 4
            names = sorted(int(p.name[5:-4]) for p in (root / study).glob("image*.png"))
            assert names == list(range(1, n + 1))
    # no stray PNGs beside the listed ones
    listed = {line for s in ("train", "valid") for line in _lines(mura / f"{s}_image_paths.csv")}
    on_disk = {p.relative_to(root).as_posix() for p in mura.rglob("*.png")}
    assert listed == on_disk


def test_plan_properties():
    plan = plan_dataset(150, seed=0)
    patients = {(p.split, p.patient) for p in plan}
    assert len({pt for _s, pt in patients}) == 150  # unique ids, one split each
    valid = {pt for s, pt in patients if s == "valid"}
    train = {pt for s, pt in patients if s == "train"}
    assert len(valid) == 30 and max(train) < min(valid)
    assert {p.body_part for p in plan} == set(BODY_PARTS)
    assert {p.body_part for p in plan if p.split == "valid"} == set(BODY_PARTS)
    rate = np.mean([p.label for p in plan])
    assert 0.3 <= rate <= 0.5
    for part in BODY_PARTS:  # every body part has both classes
        assert {p.label for p in plan if p.body_part == part} == {0, 1}
    assert {p.n_views for p in plan} == {1, 2, 3, 4}
    by_patient = defaultdict(list)
    for p in plan:
        by_patient[p.patient].append(p)
    assert {len(v) for v in by_patient.values()} == {1, 2}
    for v in by_patient.values():
        assert [p.study for p in v] == list(range(1, len(v) + 1))
        assert len({p.body_part for p in v}) == 1


def test_sizes_and_aspects_vary(small):
    base, _ = small
    shapes = [cv2.imread(str(p), 0).shape for p in (base / "root" / "MURA-v1.1").rglob("*.png")]
    longs = [max(s) for s in shapes]
    aspects = [w / h for h, w in shapes]
    assert 256 <= min(longs) and max(longs) <= 512 and max(longs) - min(longs) > 100
    assert min(aspects) >= 0.59 and max(aspects) <= 1.51 and max(aspects) - min(aspects) > 0.3


def test_summary(small):
    _, s = small
    assert s["patients"] == 24 and s["splits"]["valid"]["patients"] == 5
    assert s["studies"] == sum(v["studies"] for v in s["body_parts"].values())
    assert s["images"] == s["dicom_files"]
    assert set(s["csv"]) == {"train_image_paths", "train_labeled_studies", "valid_image_paths",
                             "valid_labeled_studies", "patient_metadata"}


# ---------------------------------------------------------------------------------------------
# Determinism and re-runs
# ---------------------------------------------------------------------------------------------
def test_deterministic(tmp_path, small):
    base, _ = small
    generate_mura_root(tmp_path / "a", 24, seed=5, dicom_dir=tmp_path / "da")
    assert _tree_digest(tmp_path / "a") == _tree_digest(base / "root")
    assert _tree_digest(tmp_path / "da") == _tree_digest(base / "dicom")
    generate_mura_root(tmp_path / "b", 24, seed=6)
    a, b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    common = [k for k in a if k in b and k.endswith(".png")]
    assert sum(a[k] != b[k] for k in common) == len(common)  # a different seed changes every image
    assert (tmp_path / "a/MURA-v1.1/train_labeled_studies.csv").read_bytes() != \
        (tmp_path / "b/MURA-v1.1/train_labeled_studies.csv").read_bytes()


def test_study_pixels_independent_of_order():
    plan = plan_dataset(10, seed=2)
    first = [render_study(p) for p in plan]
    again = [render_study(p) for p in reversed(plan)][::-1]
    for x, y in zip(first, again):
        for a, b in zip(x, y):
            assert np.array_equal(a, b)


def test_rerun_replaces_and_refuses_foreign(tmp_path):
    generate_mura_root(tmp_path / "r", 10, seed=1)
    s = generate_mura_root(tmp_path / "r", 5, seed=1)
    pngs = list((tmp_path / "r/MURA-v1.1").rglob("*.png"))
    assert len(pngs) == s["images"]  # stale images of the bigger run are gone
    foreign = tmp_path / "real"
    (foreign / "MURA-v1.1").mkdir(parents=True)
    (foreign / "MURA-v1.1/train_image_paths.csv").write_text("x\n")
    with pytest.raises(FileExistsError):
        generate_mura_root(foreign, 3, seed=0)
    assert (foreign / "MURA-v1.1/train_image_paths.csv").read_text() == "x\n"
    with pytest.raises(ValueError):
        generate_mura_root(tmp_path / "bad", 0)


# ---------------------------------------------------------------------------------------------
# Content: abnormalities in bone, confounders unrelated to the label
# ---------------------------------------------------------------------------------------------
def test_confounders_not_label_correlated():
    plan = plan_dataset(300, seed=11)
    stats = {0: Counter(), 1: Counter()}
    for p in plan:
        spec = study_specs(p)
        for c in spec["confounders"]:
            s = stats[p.label]
            s["n"] += 1
            s["marker"] += c["marker"] is not None
            s["ruler"] += c["ruler"] is not None
            s["collimation"] += c["collimation"] is not None
            s["text"] += c["text"] is not None
        for v in spec["views"]:
            stats[p.label]["rot"] += abs(v["rot"]) > 10
    assert stats[0]["n"] > 300 and stats[1]["n"] > 200
    for key in ("marker", "ruler", "collimation", "text", "rot"):
        r0, r1 = stats[0][key] / stats[0]["n"], stats[1][key] / stats[1]["n"]
        assert abs(r0 - r1) < 0.15, (key, r0, r1)
    assert 0.4 < stats[0]["marker"] / stats[0]["n"] < 0.9
    assert stats[0]["ruler"] > 0 and stats[1]["ruler"] > 0


def test_markers_are_drawn():
    """A view with a marker differs from the same view without it only near the marker."""
    plan = [p for p in plan_dataset(40, seed=4)]
    checked = 0
    for p in plan:
        spec = study_specs(p)
        for i, c in enumerate(spec["confounders"]):
            if c["marker"] is None:
                continue
            from mura_monai.data.synthetic_anatomy import render_view

            bare = {**c, "marker": None}
            a, _ = render_view(spec["anatomy"], spec["view_kinds"][i], spec["views"][i], [], i, c)
            b, _ = render_view(spec["anatomy"], spec["view_kinds"][i], spec["views"][i], [], i, bare)
            diff = np.abs(a.astype(int) - b.astype(int)) > 40
            assert diff.sum() > 20
            ys, xs = np.nonzero(diff)
            assert (ys.max() - ys.min()) < 0.2 * max(a.shape) and (xs.max() - xs.min()) < 0.2 * max(a.shape)
            checked += 1
        if checked >= 5:
            break
    assert checked >= 5


def test_abnormalities_are_in_bone_and_visible():
    plan = [p for p in plan_dataset(60, seed=3) if p.label][:20]
    assert len(plan) >= 15
    in_bone = []
    strengths = []
    for p in plan:
        spec = study_specs(p)
        with_abn, masks = render_study(p, abnormal=True, with_masks=True, specs=spec)
        without = render_study(p, abnormal=False, specs=spec)
        shown = 0
        for i, (a, b, m) in enumerate(zip(with_abn, without, masks)):
            diff = np.abs(a.astype(int) - b.astype(int)) > 25
            if not any(ab["views"][i] for ab in spec["abnormalities"]):
                assert not diff.any()
                continue
            shown += 1
            k = max(3, int(0.06 * max(a.shape))) | 1
            near = cv2.dilate(m, np.ones((k, k), np.uint8)) > 0
            if diff.sum():
                in_bone.append((diff & near).sum() / diff.sum())
            # strength at the resolution the demo trains at (long side 128)
            s = 128 / max(a.shape)
            size = (max(1, round(a.shape[1] * s)), max(1, round(a.shape[0] * s)))
            a1 = cv2.resize(a, size, interpolation=cv2.INTER_AREA).astype(int)
            b1 = cv2.resize(b, size, interpolation=cv2.INTER_AREA).astype(int)
            strengths.append(int((np.abs(a1 - b1) > 20).sum()))
        assert shown >= 1
    assert np.median(in_bone) > 0.9
    assert np.mean(np.array(strengths) >= 4) > 0.7  # most abnormal views stay visible at 128 px
    for p in [q for q in plan_dataset(20, seed=3) if not q.label][:3]:  # normals: nothing to hide
        a = render_study(p, abnormal=True)
        b = render_study(p, abnormal=False)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_metal_is_brighter_than_bone():
    """Hardware saturates while processed bone stays grey, as on a real radiograph, so fixation
    hardware is visible at 128 px; markers and rulers (drawn in both classes) can be as bright."""
    studies = []
    for p in plan_dataset(80, seed=4):
        if p.label:
            spec = study_specs(p)
            if [a["kind"] for a in spec["abnormalities"]] == ["hardware"]:
                studies.append((p, spec))
    assert len(studies) >= 4
    checked = 0
    for p, spec in studies[:4]:
        with_abn, masks = render_study(p, abnormal=True, with_masks=True, specs=spec)
        without = render_study(p, abnormal=False, specs=spec)
        for a, b, m in zip(with_abn, without, masks):
            bone = b[cv2.erode(m, np.ones((5, 5), np.uint8)) > 0]
            metal = (a.astype(int) - b.astype(int)) > 25
            assert np.percentile(bone, 99) < 0.92 * 255
            if metal.sum() > 20:
                assert np.percentile(a[metal], 90) > np.percentile(bone, 99) + 10
                checked += 1
    assert checked >= 4


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------
def _index(base: Path) -> list[dict]:
    with open(base / "dicom" / "index.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == INDEX_COLUMNS
        return list(reader)


def _to_unit(ds) -> np.ndarray:
    """Modality LUT, linear VOI window (PS3.3 C.11.2.1.2.1), MONOCHROME1 inversion."""
    x = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    return 1.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y


def test_dicom_index_and_layout(small):
    base, summary = small
    rows = _index(base)
    root = base / "root"
    listed = {line for s in ("train", "valid") for line in _lines(root / f"MURA-v1.1/{s}_image_paths.csv")}
    labels = {}
    for s in ("train", "valid"):
        for line in _lines(root / f"MURA-v1.1/{s}_labeled_studies.csv"):
            k, v = line.rsplit(",", 1)
            labels[k] = v
    assert len(rows) == summary["images"] == len(listed)
    assert {r["image_path"] for r in rows} == listed
    assert summary["dicom_index"] == str(base / "dicom" / "index.csv")
    for r in rows:
        assert re.fullmatch(r"(train|valid)/patient\d{5}/study\d+/image\d+\.dcm", r["dicom_path"])
        assert "positive" not in r["dicom_path"] and "negative" not in r["dicom_path"]
        assert (base / "dicom" / r["dicom_path"]).is_file()
        assert labels[r["study_path"]] == r["label"]
        assert r["image_path"].startswith(r["study_path"])
        assert r["body_part"] in BODY_PARTS
    variants = {(r["modality"], r["photometric_interpretation"], r["transfer_syntax_uid"]) for r in rows}
    assert len(variants) == 8
    assert {int(r["bits_stored"]) for r in rows} <= {12, 13, 14, 15, 16}
    # one StudyInstanceUID per study, shared by its views
    by_study = defaultdict(set)
    for r in rows:
        by_study[r["study_path"]].add(r["study_instance_uid"])
    assert all(len(v) == 1 for v in by_study.values())
    assert len({next(iter(v)) for v in by_study.values()}) == len(by_study)
    assert len({r["sop_instance_uid"] for r in rows}) == len(rows)


def test_dicom_pixels_and_tags(small):
    base, _ = small
    root = base / "root"
    seen = Counter()
    for r in _index(base):
        ds = pydicom.dcmread(base / "dicom" / r["dicom_path"])
        png = cv2.imread(str(root / r["image_path"]), cv2.IMREAD_UNCHANGED)
        assert (ds.Rows, ds.Columns) == png.shape
        # same pixels as the PNG after modality + VOI LUT (+ inversion)
        assert np.abs(_to_unit(ds) * 255.0 - png).max() < 0.01
        stored = ds.pixel_array
        bits = int(ds.BitsStored)
        assert 12 <= bits <= 16 and ds.HighBit == bits - 1 and ds.BitsAllocated == 16
        assert int(stored.max()) < (1 << bits)
        if ds.PhotometricInterpretation == "MONOCHROME1":  # inverted stored values
            assert np.corrcoef(stored.ravel().astype(float), png.ravel().astype(float))[0, 1] < -0.99
            seen["mono1"] += 1
        else:
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert np.corrcoef(stored.ravel().astype(float), png.ravel().astype(float))[0, 1] > 0.99
        ts = ds.file_meta.TransferSyntaxUID
        if ts == pydicom.uid.JPEG2000Lossless:
            seen["j2k"] += 1
            assert ds.LossyImageCompression == "00"
            # lossless: decoded values equal the uncompressed stored values of the same PNG
            # (the windowed match above already rules out any error of one stored step)
            if seen["j2k"] <= 6:
                plain = pydicom.dcmread(base / "dicom" / r["dicom_path"])
                plain.decompress()
                assert plain.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
                assert np.array_equal(plain.pixel_array, stored)
                lo = round((float(ds.WindowCenter) - 0.5 - (float(ds.WindowWidth) - 1) / 2
                            - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
                if ds.PhotometricInterpretation == "MONOCHROME1":
                    expected, _lo, _hi = pixel_mapping(png, bits, "MONOCHROME1", (1 << bits) - 1 - round(
                        (float(ds.WindowCenter) - 0.5 + (float(ds.WindowWidth) - 1) / 2
                         - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)))
                else:
                    expected, _lo, _hi = pixel_mapping(png, bits, "MONOCHROME2", lo)
                assert np.array_equal(expected, stored)
        else:
            assert ts == pydicom.uid.ExplicitVRLittleEndian
        # tags
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientAge", "PatientSex", "StudyInstanceUID",
                   "SeriesInstanceUID", "SOPInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                   "StudyDescription", "SeriesDescription", "Modality", "BodyPartExamined", "ViewPosition",
                   "Manufacturer", "InstanceNumber", "SeriesNumber", "ImagerPixelSpacing", "WindowCenter",
                   "WindowWidth", "RescaleSlope", "RescaleIntercept"):
            assert kw in ds and str(ds.data_element(kw).value) != "", kw
        assert str(ds.PatientName) == f"SYNTH^{r['patient_id']}"
        assert re.fullmatch(r"\d{3}Y", ds.PatientAge)
        assert ds.BodyPartExamined == DICOM_BODY_PART[r["body_part"]]
        assert ds.StudyDescription.startswith(f"XR {ds.BodyPartExamined} ")
        assert ds.StudyInstanceUID == r["study_instance_uid"] and ds.SOPInstanceUID == r["sop_instance_uid"]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        if ds.Modality == "DX":
            assert ds.SOPClassUID == DX_IMAGE_STORAGE_PRESENTATION
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            assert ds.ImageLaterality == r["laterality"]
            assert ds.PresentationLUTShape == ("INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1"
                                               else "IDENTITY")
            seen["dx"] += 1
        else:
            assert ds.Modality == "CR" and ds.SOPClassUID == CR_IMAGE_STORAGE
            assert ds.Laterality == r["laterality"]
            assert "PixelSpacing" in ds
            seen["cr"] += 1
    assert min(seen["mono1"], seen["j2k"], seen["dx"], seen["cr"]) > 0


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (dicom3tools) is not on PATH; `make install` installs it")
def test_dicom_passes_dciodvfy(small):
    base, _ = small
    files = sorted((base / "dicom").rglob("*.dcm"))
    assert files
    bad = {}
    for f in files:
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (res.stderr + res.stdout).splitlines() if line.startswith("Error")]
        if errors:
            bad[f.relative_to(base).as_posix()] = errors
    assert not bad, bad
