"""What brings the SR to the PACS sooner than the whole analysis takes: a worker with nothing
waiting scores the instances of studies still receiving, and the SR is queued before the heatmaps
are drawn. Neither may change a result: the prescored study's SR says what a fresh scoring says,
and the captures that follow the SR are the ones the study's result names."""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from listener.store import Store
from listener.worker import PRESCORE_BATCH, Worker
from mura_monai.results import StudyResult
from tests.listener.support import receive_files
from tests.listener.test_heatmap_pass import _decodes, _studies, _worker


def _expected(predictor, files) -> StudyResult:
    records, P = predictor.member_probabilities(files)
    (study,) = predictor.studies(records, P)
    return study


def test_a_worker_scores_receiving_studies_ahead_and_their_analysis_decodes_nothing_again(tmp_path, ensemble, predictor,
                                                                                         monkeypatch):
    worker, store, spool = _worker(tmp_path / "svc", ensemble, predictor, heatmap_studies="all")
    studies = sorted(_studies(ensemble), key=len)[-2:]
    n = sum(map(len, studies))
    assert n > PRESCORE_BATCH
    expected = [_expected(predictor, files) for files in studies]
    counts = _decodes(monkeypatch)
    keys = [receive_files(store, spool, files, now=i, stable=False) for i, files in enumerate(studies)]
    assert worker.run_once() == 0  # nothing complete yet
    assert [worker.prescore(), worker.prescore(), worker.prescore()] == [PRESCORE_BATCH, n - PRESCORE_BATCH, 0]
    paths = [i["path"] for key in keys for i in store.instances(key)]
    assert counts == Counter({path: 1 for path in paths})

    # one file stored again (an instance sent twice): its early score is not the new file's
    again = Path(paths[0]).with_suffix(".again")
    shutil.copy(paths[0], again)
    os.replace(again, paths[0])
    store.promote_stable(1, now=100)
    assert worker.run_once() == 2
    assert counts == Counter({path: 1 for path in paths}) + Counter({paths[0]: 1})  # the heatmaps decoded nothing
    for key, fresh in zip(keys, expected):
        study = store.study(key)
        assert study.state == "analysed" and study.result.probability == pytest.approx(fresh.probability, abs=1e-6)
        images = {i.sop_instance_uid: i.probability for i in study.result.images}
        assert images == pytest.approx({i.sop_instance_uid: i.probability for i in fresh.images}, abs=1e-6)
        assert all(Path(i.heatmap).is_file() for i in study.result.images)


def test_prescore_images_bounds_what_is_kept_and_zero_turns_it_off(tmp_path, ensemble, predictor, monkeypatch):
    files = max(_studies(ensemble), key=len)[:3]
    counts = _decodes(monkeypatch)
    off, store, spool = _worker(tmp_path / "off", ensemble, predictor, prescore_images=0)
    receive_files(store, spool, files, now=0, stable=False)
    assert off.prescore() == 0 and counts == Counter()

    two, store, spool = _worker(tmp_path / "two", ensemble, predictor, prescore_images=2)
    key = receive_files(store, spool, files, now=0, stable=False)
    assert [two.prescore(), two.prescore()] == [2, 0]  # full: the third waits for the analysis
    store.promote_stable(1, now=100)
    assert two.run_once() == 1 and store.study(key).state == "analysed"
    assert sorted(counts.values()) == [1, 1, 1]  # the two kept were used, the third scored with them


def test_the_sr_is_queued_before_any_heatmap_is_drawn_and_the_captures_follow_it(tmp_path, ensemble, predictor):
    seen: list[dict] = []

    class Watched(Worker):
        def draw_heatmaps(self, job):
            seen.append({key: ([Path(r["path"]).name for r in self.store.outbox(key)], self.store.study(key).state)
                         for key in keys})
            return super().draw_heatmaps(job)

    config = _worker(tmp_path / "svc", ensemble, predictor, heatmap_studies="all")[0].config
    store = Store(config.spool_dir / "queue.sqlite3")
    worker = Watched(config, store, predictor=predictor)
    spool = _worker(tmp_path / "svc", ensemble, predictor)[2]
    studies = [files for files in _studies(ensemble) if len(files) >= 2][:2]
    keys = [receive_files(store, spool, files, now=i) for i, files in enumerate(studies)]
    assert worker.run_once() == 2
    # at the first heatmap, both studies of the batch had their SR alone queued and were analysed
    assert seen[0] == {key: (["sr.dcm"], "analysed") for key in keys}
    for key, files in zip(keys, studies):
        study = store.study(key)
        names = [Path(r["path"]).name for r in sorted(store.outbox(key), key=lambda r: r["id"])]
        assert names == ["sr.dcm", *(f"sc_{n}.dcm" for n in range(1, len(files) + 1))]
        assert [Path(p).name for p in study.result.dicom_outputs] == names  # the stored result names them
        assert all(Path(i.heatmap).is_file() for i in study.result.images)
        assert study.version == 1 and study.state == "analysed"


def _analysed(store, key: str, result: StudyResult, at: float, worker: str = "h:1/7") -> int:
    store.promote_stable(1, now=at)
    store.claim(worker, now=at + 1)
    return store.finish(key, result, [f"/o{at}/sr.dcm"], ["PACS@h:1"], 1, f"/o{at}/sr.dcm", now=at + 2, worker_id=worker,
                        captures_to_come=True)


def test_a_study_is_sent_once_the_captures_that_follow_its_sr_are_and_not_before(store_url):
    store = Store(store_url)
    result = StudyResult(study="1.2", body_part="XR_WRIST", probability=0.9, abnormal=True, threshold=0.5)
    key = store.record_instance("1.2.1", "1.2", "MOD", "1.2.840.10008.5.1.4.1.1.1", "/x/1.dcm", now=0)
    version = _analysed(store, key, result, 10)
    (sr,) = store.outbox(key)
    store.export_done(sr["id"], now=13)
    assert store.study(key).state == "analysed"  # the SR is in the PACS, its captures are still to come
    assert store.add_outputs(key, version, result, ["/o/sc_1.dcm"], ["PACS@h:1"], 1, now=14)
    (sc,) = [r for r in store.outbox(key) if r["state"] == "pending"]
    assert sc["path"] == "/o/sc_1.dcm" and store.study(key).state == "analysed"
    store.export_done(sc["id"], now=15)
    assert store.study(key).state == "sent"

    # new instances: a new analysis; the captures of the one before are dropped when they come
    store.record_instance("1.2.2", "1.2", "MOD", "1.2.840.10008.5.1.4.1.1.1", "/x/2.dcm", now=20)
    again = _analysed(store, key, result, 30)
    assert not store.add_outputs(key, version, result, ["/o/sc_2.dcm"], ["PACS@h:1"], 1, now=33)
    assert "/o/sc_2.dcm" not in [r["path"] for r in store.outbox(key)]
    # captures that could not be drawn: the study is settled on its SR
    store.export_done(next(r["id"] for r in store.outbox(key) if r["state"] == "pending"), now=34)
    assert store.add_outputs(key, again, result, [], ["PACS@h:1"], 1, now=35)
    assert store.study(key).state == "sent"


def test_captures_a_dead_worker_was_to_draw_are_given_up_when_its_service_restarts(store_url):
    store = Store(store_url)
    result = StudyResult(study="1.3", body_part="XR_HAND", probability=0.1, abnormal=False, threshold=0.5)
    key = store.record_instance("1.3.1", "1.3", "MOD", "1.2.840.10008.5.1.4.1.1.1", "/x/1.dcm", now=0)
    _analysed(store, key, result, 10, worker="host:104/55")
    store.export_done(store.outbox(key)[0]["id"], now=13)
    store.recover("other:104/", now=14)  # another service's restart: its workers are not this one's
    assert store.study(key).state == "analysed"
    store.recover("host:104/", now=15)
    assert store.study(key).state == "sent" and store.study(key).claimed_by is None


def test_the_assembly_knows_when_the_next_study_is_complete(store_url):
    store = Store(store_url)
    assert store.next_stable_at(2.0) is None
    store.record_instance("1.1.1", "1.1", "MOD", "1.2.840.10008.5.1.4.1.1.1", "/x/1.dcm", now=10)
    store.record_instance("1.2.1", "1.2", "MOD", "1.2.840.10008.5.1.4.1.1.1", "/x/2.dcm", now=11)
    assert store.next_stable_at(2.0) == 12.0
    assert store.promote_stable(2.0, now=12.0) and store.next_stable_at(2.0) == 13.0
    assert [row["state"] for row in store.receiving_instances()] == ["waiting", "received"]
