"""The labels table: the model's finding copied once per analysis, reviewers' findings kept as history."""
from __future__ import annotations

import sqlite3

import pytest

from listener.review.datastore import ReviewDatastore
from listener.review.labels import LabelStore, review_state
from listener.store import Store


def test_original_labels_copy_each_analysed_study_once(make_listener):
    config = make_listener()
    store = Store(config.spool_dir / "queue.sqlite3")
    labels = LabelStore(store)
    studies = store.studies()
    assert labels.record_originals() == len(studies) > 0
    assert labels.record_originals() == 0
    for study in studies:
        original = labels.latest(study.key, "original")
        assert original.finding == ("abnormal" if study.result.abnormal else "normal")
        assert original.probability == pytest.approx(study.result.probability)
        assert original.analysis_version == study.result.analysis_version == 1


def test_a_new_final_label_is_a_new_row_and_the_latest_wins(make_listener):
    config = make_listener()
    store = Store(config.spool_dir / "queue.sqlite3")
    labels = LabelStore(store)
    labels.record_originals()
    key = store.studies()[0].key
    model = labels.latest(key, "original").finding
    other = "normal" if model == "abnormal" else "abnormal"
    labels.add(key, "final", model, reviewer="dr-a", now=10.0)
    assert review_state(labels.latest(key, "original"), labels.latest(key, "final")) == "accepted"
    labels.add(key, "final", other, reviewer="dr-b", comment="fracture line on view 2", now=20.0)
    latest = labels.latest(key, "final")
    assert (latest.finding, latest.reviewer, latest.comment) == (other, "dr-b", "fracture line on view 2")
    assert review_state(labels.latest(key, "original"), latest) == "overridden"
    assert [(lab.tag, lab.reviewer) for lab in labels.history(key)] == [("original", None), ("final", "dr-a"), ("final", "dr-b")]
    # the same database the listener uses, read by a fresh connection: the rows are committed
    rows = sqlite3.connect(config.spool_dir / "queue.sqlite3").execute(
        "SELECT finding FROM labels WHERE tag='final' ORDER BY id").fetchall()
    assert rows == [(model,), (other,)]


def test_image_labels_do_not_decide_the_study(make_listener):
    config = make_listener()
    store = Store(config.spool_dir / "queue.sqlite3")
    labels = LabelStore(store)
    key = store.studies()[0].key
    uid = store.instances(key)[0]["sop_instance_uid"]
    labels.add(key, "final", "abnormal", sop_instance_uid=uid, reviewer="dr-a")
    assert labels.latest(key, "final") is None
    assert labels.latest(key, "final", uid).finding == "abnormal"


@pytest.mark.parametrize("tag,finding,reviewer", [("final", "abnormal", ""), ("draft", "normal", "x"),
                                                  ("final", "maybe", "x")])
def test_bad_labels_are_refused(make_listener, tag, finding, reviewer):
    store = Store(make_listener().spool_dir / "queue.sqlite3")
    with pytest.raises(ValueError):
        LabelStore(store).add(store.studies()[0].key, tag, finding, reviewer=reviewer)


def test_datastore_reads_the_listener_tables_in_place(make_listener):
    config = make_listener()
    data = ReviewDatastore(config)
    studies = data.studies()
    assert len(studies) == len(Store(config.spool_dir / "queue.sqlite3").studies())
    study = next(s for s in studies if s.images[0].heatmap is not None)
    assert study.review == "unreviewed" and study.analysed and study.header["AccessionNumber"]
    assert all(image.heatmap.is_file() for image in study.images)
    assert data.find(study.id)[0].study.key == study.study.key
    found_study, found_image = data.find(study.images[0].id)
    assert found_study.id == study.id and found_image.sop_instance_uid == study.images[0].sop_instance_uid
    assert data.find("snot-an-id") is None


def test_labels_on_both_store_backends(store_url):
    """The labels table's own SQL (``IS`` for a study label, ``RETURNING`` for the new row, the
    latest per study in one query) on SQLite and on PostgreSQL alike."""
    store = Store(store_url)
    labels = LabelStore(store)
    first = labels.add("MODALITY|1.2.3", "final", "abnormal", reviewer="jdoe", reviewer_name="Doe^Jane", now=10.0)
    image = labels.add("MODALITY|1.2.3", "final", "normal", reviewer="jdoe", sop_instance_uid="1.2.3.4", now=11.0)
    second = labels.add("MODALITY|1.2.3", "final", "normal", unattributed=True, client_id="slicer-7", now=12.0)
    assert second.id > image.id > first.id and first.reviewer_name == "Doe^Jane"
    latest = labels.latest("MODALITY|1.2.3", "final")  # the study's, not the image's
    assert (latest.id, latest.finding, latest.unattributed, latest.client_id) == (second.id, "normal", True, "slicer-7")
    assert labels.latest("MODALITY|1.2.3", "final", "1.2.3.4").id == image.id
    assert [label.id for label in labels.history("MODALITY|1.2.3")] == [first.id, image.id, second.id]
    assert {k: v.id for k, v in labels.latest_study_labels().items()} == {("MODALITY|1.2.3", "final"): second.id}
    store.close()
