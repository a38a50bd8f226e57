"""The exporter against a real Orthanc: delivery, PACS down then up across a restart, giving up, priority."""
from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pydicom
import pytest

from listener.exporter import Exporter, destination_key
from listener.store import Store
from mura_monai.results import StudyResult
from tests.listener.orthanc import OrthancServer, have_orthanc
from tests.listener.support import load

pytestmark = pytest.mark.skipif(not have_orthanc(), reason="Debian's orthanc not installed")


@pytest.fixture
def pacs(tmp_path):
    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.stop()


def _files(tmp_path: Path, names=("RG1_UNCR.dcm", "RG3_UNCR.dcm")) -> list[Path]:
    data_store = pytest.importorskip("data_store")
    out = []
    for name in names:
        out.append(Path(shutil.copy(Path(data_store.__file__).parent / "data" / name, tmp_path / name)))
    return out


def _queue(store: Store, files, destination: str, priority: int, study_uid: str, now: float) -> str:
    key = store.record_instance(f"{study_uid}.1", study_uid, "MODALITY", "1.2", files[0], now=now)
    store.promote_stable(0, now=now)
    store.claim(now=now)
    store.finish(key, StudyResult("1.2.3", "XR_WRIST", 0.9, bool(priority), 0.5), files, [destination], priority, None, now=now)
    return key


def _setup(tmp_path, pacs, **destination):
    config = load(tmp_path / "svc", destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                                                   **destination}])
    return config, Store(config.spool_dir / "queue.sqlite3")


def test_results_arrive_in_the_pacs_and_the_study_is_sent(tmp_path, pacs):
    config, store = _setup(tmp_path, pacs)
    files = _files(tmp_path)
    key = _queue(store, files, destination_key(config.destinations[0]), 0, "1.2.3", now=100.0)
    assert Exporter(config, store).run_once(now=101.0) == 2
    received = {pydicom.dcmread(io.BytesIO(pacs.instance_file(i))).SOPInstanceUID for i in pacs.instances()}
    assert received == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert store.study(key).state == "sent"


def test_pacs_down_backs_off_then_delivers_after_a_restart(tmp_path, pacs, caplog):
    config, store = _setup(tmp_path, pacs, retry_initial_s=5.0, retry_max_s=60.0)
    key = _queue(store, _files(tmp_path)[:1], destination_key(config.destinations[0]), 0, "1.2.4", now=100.0)
    pacs.stop()
    caplog.set_level(logging.WARNING, logger="listener.exporter")
    exporter = Exporter(config, store)
    assert exporter.run_once(now=100.0) == 0
    (row,) = store.outbox(key)
    assert row["attempts"] == 1 and row["next_attempt_at"] == pytest.approx(105.0) and row["state"] == "pending"
    assert exporter.run_once(now=103.0) == 0 and store.outbox(key)[0]["attempts"] == 1  # not due yet
    assert exporter.run_once(now=105.0) == 0
    assert store.outbox(key)[0]["next_attempt_at"] == pytest.approx(115.0)  # 5 s, then 10 s
    assert "will retry" in caplog.text
    pacs.start()
    restarted = Exporter(config, Store(config.spool_dir / "queue.sqlite3"))  # a listener restart
    assert restarted.run_once(now=115.0) == 1
    assert len(pacs.instances()) == 1 and store.study(key).state == "sent"


def test_given_up_after_the_configured_time(tmp_path, pacs, caplog):
    config, store = _setup(tmp_path, pacs, give_up_after_s=30.0)
    key = _queue(store, _files(tmp_path)[:1], destination_key(config.destinations[0]), 0, "1.2.5", now=100.0)
    pacs.stop()
    caplog.set_level(logging.ERROR, logger="listener.exporter")
    Exporter(config, store).run_once(now=131.0)
    assert store.outbox(key)[0]["state"] == "gave_up"
    study = store.study(key)
    assert study.state == "failed" and study.reason == "export given up"
    assert "result given up" in caplog.text


def test_abnormal_studies_go_first(tmp_path, pacs):
    config, store = _setup(tmp_path, pacs)
    dest = destination_key(config.destinations[0])
    normal, abnormal = _files(tmp_path)
    k_normal = _queue(store, [normal], dest, 0, "1.2.6", now=100.0)
    k_abnormal = _queue(store, [abnormal], dest, 1, "1.2.7", now=101.0)
    assert [e.study_key for e in store.due_exports(now=102.0)] == [k_abnormal, k_normal]
    Exporter(config, store).run_once(now=102.0)
    order = sorted(store.outbox(), key=lambda r: r["id"])
    assert all(r["state"] == "sent" for r in order)
