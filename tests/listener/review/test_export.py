"""``mura-listener export-labels``: reviewed studies as a MURA root the data layer reads, and the agreement table."""
from __future__ import annotations

import csv
import json
import math
import re

import cv2
import pydicom
import pytest
from sklearn.metrics import cohen_kappa_score

from listener.__main__ import main
from listener.review.export import _anonymise
from listener.review.labels import LabelStore
from listener.store import Store
from mura_monai.data.mura import load_mura_split
from tests.bundles.bundle_runner import TRAIN, bundle_run


def _review(config):
    """Three of the four studies reviewed: the first overridden (twice: the latest counts), two
    accepted, the last of them by MONAI Label's client, which names no reviewer."""
    store = Store(config.spool_dir / "queue.sqlite3")
    labels = LabelStore(store)
    labels.record_originals()
    studies = sorted(store.studies(), key=lambda s: s.key)
    truth = {}
    for n, study in enumerate(studies[:3]):
        model = "abnormal" if study.result.abnormal else "normal"
        final = ("normal" if model == "abnormal" else "abnormal") if n == 0 else model
        if n == 0:
            labels.add(study.key, "final", model, reviewer="dr-a")
        if n == 2:
            labels.add(study.key, "final", final, unattributed=True, client_id="slicer-7")
        else:
            labels.add(study.key, "final", final, reviewer="dr-b")
        truth[study.key] = (study, int(final == "abnormal"), model == "abnormal")
    return store, truth


def test_reviewed_studies_export_as_a_mura_root_with_the_final_labels(make_listener, tmp_path, capsys):
    config = make_listener()
    store, truth = _review(config)
    out = tmp_path / "export"
    assert main(["export-labels", "--config", str(config.path), str(out)]) == 0
    splits = [load_mura_split(out, split) for split in ("train", "valid")]
    exported = [study for split in splits for study in split.studies]
    assert len(exported) == 3 and all(split.studies for split in splits)  # both splits, by patient
    assert not {s["patient"] for s in splits[0].studies} & {s["patient"] for s in splits[1].studies}
    expected = sorted((s.result.body_part, label, len(s.result.images)) for s, label, _ in truth.values())
    assert sorted((s["body_part"], s["label"], len(s["images"])) for s in exported) == expected
    for study in exported:
        assert re.fullmatch(r"patient\d{5}", study["patient"])
        assert study["study"].endswith("_positive" if study["label"] else "_negative")
    # the radiographs at their own size, and nothing of the patient's identity in names or CSVs
    sources = {pydicom.dcmread(i["path"], stop_before_pixels=True).SOPInstanceUID: i["path"]
               for key in truth for i in store.instances(key)}
    shapes = sorted((ds.Rows, ds.Columns) for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in sources.values()))
    assert sorted(cv2.imread(image, cv2.IMREAD_UNCHANGED).shape for s in exported for image in s["images"]) == shapes
    identities = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in sources.values()}
    text = "".join(path.read_text() for path in (out / "MURA-v1.1").glob("*.csv"))
    assert not any(identity in text for identity in identities)

    rows = {row["body_part"]: row for row in csv.DictReader((out / "agreement.csv").open())}
    everything = rows["ALL"]
    assert (everything["studies"], everything["agree"], everything["overridden"]) == ("3", "2", "1")
    assert everything["unattributed"] == "1"  # exported like any final label, and counted as nobody's
    reviewer = [bool(label) for _, label, _ in truth.values()]
    model = [abnormal for _, _, abnormal in truth.values()]
    kappa = cohen_kappa_score(reviewer, model, labels=[False, True]) if len(set(reviewer + model)) > 1 else None
    assert (everything["kappa"] == "") if kappa is None else float(everything["kappa"]) == pytest.approx(kappa, abs=1e-3)
    assert "| ALL | 3 | 2 |" in (out / "agreement.md").read_text()
    assert '"valid": ' in capsys.readouterr().out
    assert main(["export-labels", "--config", str(config.path), str(out)]) == 2  # never over an earlier export

    # retraining on the corrections is one `run training` away: a bundle trains on the export unchanged
    bundle_run("densenet169_wbce", "training", TRAIN, "--dataset_dir", str(out), "--ckpt_dir", str(tmp_path / "models"),
               "--output_dir", str(tmp_path / "train"), "--image_size", "64", "--batch_size", "2", "--max_epochs", "1",
               "--val_interval", "2", "--num_workers", "0")
    summary = json.loads((tmp_path / "models" / "training_summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["iterations"] == math.ceil(len(splits[0].images) / 2)


def test_a_patient_keeps_one_anonymous_number_across_studies():
    records = [{"patient_id": pid} for pid in ("P-7", "P-3", "P-7", "P-9")]
    _anonymise(records)
    numbers = [r["patient"] for r in records]
    assert numbers[0] == numbers[2] and len(set(numbers)) == 3
    assert sorted(set(numbers)) == ["patient00001", "patient00002", "patient00003"]
