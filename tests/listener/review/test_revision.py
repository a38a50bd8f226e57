"""A correction becomes the next SR version, queued for every PACS; an agreement sends nothing."""
from __future__ import annotations

import json
import urllib.request

import pydicom

from listener.review.datastore import study_id
from listener.store import Store
from mura_monai.dicom_out import read_sr_result
from tests.dicom_out.dciodvfy import dciodvfy_errors

DESTINATIONS = [{"ae_title": "PACS_A", "host": "127.0.0.1", "port": 4242},
                {"ae_title": "PACS_B", "host": "127.0.0.1", "port": 4243}]


def _label(app, sid: str, finding: str, reviewer: str = "dr.revision") -> dict:
    request = urllib.request.Request(f"{app.url}/datastore/label?image={sid}&tag=final", method="PUT",
                                     data=json.dumps({"finding": finding, "reviewer": reviewer}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_override_writes_a_verified_sr_version_for_every_destination(make_listener, serve):
    config = make_listener(destinations=DESTINATIONS)
    app = serve(config)
    store = Store(config.spool_dir / "queue.sqlite3")
    study = store.studies()[0]
    machine = pydicom.dcmread(study.sr_path)
    model = read_sr_result(machine)["finding"]
    corrected = "normal" if model == "abnormal" else "abnormal"

    assert _label(app, study_id(study.key), model)["sr_revised"] is False  # accepted: the PACS is right already
    assert store.study(study.key).sr_path == study.sr_path

    answer = _label(app, study_id(study.key), corrected)
    assert answer["sr_revised"] is True and answer["review"] == "overridden"
    revised = store.study(study.key)
    assert revised.sr_path != study.sr_path and revised.version == study.version + 1
    assert revised.state == "analysed" and revised.result == study.result  # the model's result stays
    queued = [row for row in store.outbox(study.key) if row["version"] == revised.version]
    assert sorted(row["destination"] for row in queued) == ["PACS_A@127.0.0.1:4242", "PACS_B@127.0.0.1:4243"]
    assert {row["path"] for row in queued} == {revised.sr_path} and all(r["state"] == "pending" for r in queued)

    sr = pydicom.dcmread(revised.sr_path)
    assert dciodvfy_errors(revised.sr_path) == []
    result = read_sr_result(sr)
    assert result["finding"] == corrected and result["reviewer"] == "dr.revision"
    assert result["predecessors"] == [machine.SOPInstanceUID] and sr.InstanceNumber == machine.InstanceNumber + 1
    assert sr.SeriesInstanceUID == machine.SeriesInstanceUID and sr.StudyInstanceUID == machine.StudyInstanceUID
    assert sorted(result["referenced_sop_instance_uids"]) == sorted(read_sr_result(machine)["referenced_sop_instance_uids"])

    back = _label(app, study_id(study.key), model)  # changed their mind: the PACS must hear it too
    assert back["sr_revised"] is True and back["review"] == "accepted"
    third = read_sr_result(pydicom.dcmread(store.study(study.key).sr_path))
    assert third["finding"] == model and third["predecessors"] == [sr.SOPInstanceUID]


def test_a_label_on_one_image_sends_no_sr(make_listener, serve):
    config = make_listener()
    app = serve(config)
    store = Store(config.spool_dir / "queue.sqlite3")
    study = store.studies()[0]
    image = json.loads(urllib.request.urlopen(f"{app.url}/datastore/study?study={study_id(study.key)}").read())["images"][0]
    finding = "normal" if study.result.abnormal else "abnormal"
    assert _label(app, image["id"], finding)["sr_revised"] is False
    assert store.study(study.key).sr_path == study.sr_path
