"""MONAI Label's own client against the real app: info, infer, next sample, labels, upload.

Calls that only read, and the upload (which the listener must then analyse), go to the live
listener's app; calls that write labels go to an app over a copy of its database.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import cv2
import numpy as np
import pydicom
import pytest
from monailabel.client.client import MONAILabelClient, MONAILabelClientException  # installed --no-deps by make

from listener.review.datastore import study_id
from listener.review.labels import LabelStore
from listener.store import Store
from mura_monai.dicom_out import read_sr_result
from tests.dicom_out.dciodvfy import dciodvfy_errors
from tests.listener.review.conftest import TOKEN, valid_dicom_studies, wait_for


def _client(url: str, token: str | None = None, tmp_path=None) -> MONAILabelClient:
    client = MONAILabelClient(url, tmpdir=str(tmp_path) if tmp_path else None)
    if token:
        client.update_auth({"token_type": "Bearer", "access_token": token})
    return client


def _get_json(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
        return json.loads(response.read())


def _get_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


@pytest.fixture
def app(make_listener, serve):
    """An app without a token over this test's copy of the database, and that copy's store."""
    config = make_listener()
    return serve(config), Store(config.spool_dir / "queue.sqlite3")


def test_info_names_the_ensemble_its_members_labels_and_thresholds(live):
    info = _client(live.review_url, TOKEN).info()
    assert set(info["models"]) == {"ensemble", "densenet169_wbce", "resnet50"}
    assert info["models"]["ensemble"]["labels"] == {"abnormal": 1} == info["labels"]
    assert info["models"]["ensemble"]["members"] == ["densenet169_wbce", "resnet50"]
    assert info["operating_point"] == "youden" and 0 < info["thresholds"]["ALL"] < 1
    assert len(info["body_parts"]) == 7 and "XR_WRIST" in info["body_parts"]
    assert set(info["strategies"]) == {"first", "random", "uncertain", "abnormal"}
    assert info["datastore"]["total"] >= len(live.pushed)


def test_infer_reproduces_the_workers_result_for_the_ensemble_and_a_member(live, tmp_path):
    client = _client(live.review_url, TOKEN, tmp_path)
    study = live.api("/datastore/studies")["studies"][0]
    stored = live.api(f"/datastore/study?study={study['id']}")
    heatmap, params = client.infer("ensemble", study["id"], {})
    assert params["study"] == study["id"] and params["model"] == "ensemble"
    assert params["probability"] == pytest.approx(stored["probability"], abs=1e-5)
    assert params["finding"] == stored["finding"] and len(params["images"]) == len(stored["images"])
    overlay = cv2.imread(heatmap)
    assert overlay is not None and overlay.ndim == 3  # the heatmap comes back as MONAI Label's result file
    image = stored["images"][0]
    _, member = client.infer("resnet50", image["id"], {})
    assert member["image"] == image["id"] and member["members"] == {}
    assert member["probability"] == pytest.approx(image["members"]["resnet50"], abs=1e-5)
    with pytest.raises(MONAILabelClientException) as error:
        client.infer("no_such_model", study["id"], {})
    assert "404" in error.value.msg


def test_next_sample_follows_each_strategy_and_ends_when_all_are_reviewed(app, tmp_path):
    served, store = app
    client = _client(served.url)
    rows = _get_json(served.url + "/datastore/studies")["studies"]
    by_id = {row["id"]: row for row in rows}
    assert client.next_sample("abnormal", {})["id"] == max(rows, key=lambda r: r["probability"])["id"]
    uncertain = client.next_sample("uncertain", {})
    assert by_id[uncertain["id"]]["uncertainty"] == max(r["uncertainty"] for r in rows)
    first = client.next_sample("first", {})
    keys = {s.key: s for s in store.studies()}
    oldest = min(keys.values(), key=lambda s: s.last_received)
    assert first["id"] == next(r["id"] for r in rows if _key(served, r["id"]) == oldest.key)
    assert client.next_sample("random", {"seed": 1})["id"] == client.next_sample("random", {"seed": 1})["id"]
    assert first["image_ids"] and first["strategy"] == "first"
    label = tmp_path / "label.json"
    label.write_text(json.dumps({"finding": "normal"}))
    for row in rows:
        client.save_label(row["id"], str(label), tag="final", params={"reviewer": "dr-next"})
    assert client.next_sample("abnormal", {}) == {}
    with pytest.raises(MONAILabelClientException):
        client.next_sample("no_such_strategy", {})


def _key(served, sid: str) -> str:
    return next(s.key for s in Store(served.config.spool_dir / "queue.sqlite3").studies() if study_id(s.key) == sid)


def test_save_label_stores_a_final_label_with_reviewer_comment_and_history(app, tmp_path):
    served, store = app
    client = _client(served.url, tmp_path=tmp_path)
    row = _get_json(served.url + "/datastore/studies")["studies"][0]
    other = "normal" if row["finding"] == "abnormal" else "abnormal"
    label = tmp_path / "label.json"
    label.write_text(json.dumps({"finding": other}))
    answer = client.save_label(row["id"], str(label), tag="final",
                               params={"reviewer": "dr-api", "comment": "cortical break"})
    assert answer["review"] == "overridden" and answer["label_info"]["finding"] == other
    text = tmp_path / "label.txt"
    text.write_text("1" if row["finding"] == "abnormal" else "0")  # the model's finding, as MONAI Label's 1/0
    assert client.save_label(row["id"], str(text), params={"reviewer": "dr-api"})["review"] == "accepted"
    labels = LabelStore(store)
    key = _key(served, row["id"])
    finals = [lab for lab in labels.history(key) if lab.tag == "final"]
    assert [(lab.finding, lab.reviewer, lab.comment) for lab in finals] == [(other, "dr-api", "cortical break"),
                                                                    (row["finding"], "dr-api", None)]
    downloaded = json.loads(open(client.download_label(row["id"], "final")).read())
    assert downloaded["finding"] == row["finding"] and downloaded["reviewer"] == "dr-api"
    original = json.loads(open(client.download_label(row["id"], "original")).read())
    assert original["finding"] == row["finding"] and original["probability"] == pytest.approx(row["probability"])
    with pytest.raises(MONAILabelClientException) as error:
        client.save_label(row["id"], str(label), tag="original", params={"reviewer": "dr-api"})
    assert "403" in error.value.msg
    assert len([lab for lab in labels.history(key) if lab.tag == "final"]) == 2


def test_monai_label_client_saves_a_label_with_its_own_arguments_only(app, tmp_path):
    """MONAI Label's client sends a client_id and no reviewer (its OHIF and Slicer plugins too):
    the label is stored as an unattributed API client's, never refused (it was a 400 before),
    and the corrected SR says where its finding came from instead of naming a person."""
    served, store = app
    client = MONAILabelClient(served.url, tmpdir=str(tmp_path), client_id="slicer-7")
    row = _get_json(served.url + "/datastore/studies")["studies"][0]
    other = "normal" if row["finding"] == "abnormal" else "abnormal"
    label = tmp_path / "label.txt"
    label.write_text("1" if other == "abnormal" else "0")
    answer = client.save_label(row["id"], str(label), tag="final")
    assert answer["review"] == "overridden" and answer["sr_revised"] is True
    info = answer["label_info"]
    assert (info["reviewer"], info["attribution"], info["client_id"]) == (None, "unattributed API client", "slicer-7")
    final = LabelStore(store).latest(_key(served, row["id"]), "final")
    assert final.unattributed and final.client_id == "slicer-7" and final.finding == other
    study = Store(served.config.spool_dir / "queue.sqlite3").study(_key(served, row["id"]))
    sr = pydicom.dcmread(study.sr_path)
    assert dciodvfy_errors(study.sr_path) == []
    result = read_sr_result(sr)
    assert result["finding"] == other and result["finding_source"] == "unattributed_api_client"
    assert sr.VerificationFlag == "UNVERIFIED" and result["reviewer"] is None
    assert "VerifyingObserverSequence" not in sr
    # the call with every argument left at the client's default (no tag, no params, no client_id)
    bare = MONAILabelClient(served.url, tmpdir=str(tmp_path))
    label.write_text("1" if row["finding"] == "abnormal" else "0")
    answer = bare.save_label(row["id"], str(label))
    assert answer["tag"] == "final" and answer["review"] == "accepted" and answer["sr_revised"] is True
    assert (answer["label_info"]["attribution"], answer["label_info"]["client_id"]) == ("unattributed API client", None)
    back = json.loads(open(bare.download_label(row["id"], "final")).read())
    assert back["finding"] == row["finding"] and back["reviewer"] is None


def test_datastore_lists_studies_and_serves_radiographs_and_heatmaps(app):
    """The listing through MONAI Label's client; the radiograph and heatmap as its viewers fetch
    them (``GET /datastore/image?image=ID``: the client itself has no download method)."""
    served, store = app
    everything = MONAILabelClient(served.url).datastore()["objects"]
    assert len(everything) == len(store.studies())
    stats = _get_json(served.url + "/datastore/")
    assert stats["total"] == len(everything) and stats["label_tags"]["original"] == len(everything)
    study = next(iter(everything.values()))["image"]["info"]
    assert study["accession_number"].startswith("A") and study["study_date"][4] == "-"
    image_id = study["image_ids"][0]
    png = cv2.imdecode(np.frombuffer(_get_bytes(served.url + f"/datastore/image?image={image_id}"), np.uint8),
                       cv2.IMREAD_UNCHANGED)
    source = pydicom.dcmread(store.instances(_key(served, study["id"]))[0]["path"], stop_before_pixels=True)
    assert png.shape == (source.Rows, source.Columns) and png.dtype == np.uint8 and png.std() > 0
    heat = cv2.imdecode(np.frombuffer(_get_bytes(served.url + f"/datastore/heatmap?image={image_id}"), np.uint8),
                        cv2.IMREAD_COLOR)
    assert heat.shape == (source.Rows, source.Columns, 3)
    info = _get_json(served.url + f"/datastore/image/info?image={image_id}")
    assert info["study"] == study["id"] and 0 <= info["probability"] <= 1 and info["heatmap"]
    with pytest.raises(urllib.error.HTTPError) as error:
        _get_bytes(served.url + "/datastore/image?image=i0000000000000000")
    assert error.value.code == 404


def test_the_worklist_filters_by_body_part_and_review_state(app, tmp_path):
    served, _ = app
    rows = _get_json(served.url + "/datastore/studies")["studies"]
    part = rows[-1]["body_part"]
    by_part = _get_json(served.url + f"/datastore/studies?body_part={part}")["studies"]
    assert by_part and {r["body_part"] for r in by_part} == {part} and len(by_part) < len(rows)
    label = tmp_path / "label.txt"
    label.write_text("normal" if rows[-1]["finding"] == "abnormal" else "abnormal")
    _client(served.url).save_label(rows[-1]["id"], str(label), params={"reviewer": "dr-filter"})
    overridden = _get_json(served.url + "/datastore/studies?state=overridden")["studies"]
    assert [r["id"] for r in overridden] == [rows[-1]["id"]]
    unreviewed = _get_json(served.url + "/datastore/studies?state=unreviewed")["studies"]
    assert len(unreviewed) == len(rows) - 1 and rows[-1]["id"] not in {r["id"] for r in unreviewed}


def test_an_uploaded_image_is_analysed_by_the_listener(live, tmp_path):
    pushed = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for files in live.pushed for f in files}
    new = next(files for files in valid_dicom_studies(live.root) if
               pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID not in pushed)
    client = _client(live.review_url, TOKEN)
    answer = client.upload_image(str(new[0]), image_id="ignored-name", params={})
    assert answer["image"].startswith("i") and answer["study"].startswith("s")
    detail = wait_for(lambda: (d := live.api(f"/datastore/study?study={answer['study']}"))["analysed"] and d, 120,
                      "the uploaded study analysed by the listener's worker")
    assert [image["id"] for image in detail["images"]] == [answer["image"]] and detail["review"] == "unreviewed"
    not_dicom = tmp_path / "note.txt"
    not_dicom.write_text("not an image")
    with pytest.raises(MONAILabelClientException) as error:
        client.upload_image(str(not_dicom), image_id="x", params={})
    assert "415" in error.value.msg
