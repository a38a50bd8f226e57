"""The worker in-process: a study that gains an image after its analysis gets a new SR version
referencing the first; a study with nothing decodable fails once, with its reason."""
from __future__ import annotations

import shutil

import pydicom
import pytest

from listener.spool import Spool
from listener.store import Store
from listener.worker import Worker
from mura_monai.dicom_out import read_sr_result
from tests.ensemble_support import ENSEMBLE, fitted_ensemble
from tests.listener.support import load


@pytest.fixture(scope="module")
def ensemble(synth_root, tmp_path_factory):
    return fitted_ensemble(synth_root, tmp_path_factory.mktemp("worker_ensemble"))


def _worker(tmp_path, ensemble):
    config = load(tmp_path / "svc", model_bundle=str(ENSEMBLE), model_device="cpu",
                  model_models_dir=str(ensemble["models"]), model_members_models_dir=str(ensemble["members"]),
                  destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}])
    store = Store(config.spool_dir / "queue.sqlite3")
    return Worker(config, store), store, Spool(config.spool_dir)


def _receive(store, spool, path, now):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    final = spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, final)
    return store.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, "MODALITY", ds.SOPClassUID, final, now=now)


def test_a_late_image_gives_a_new_sr_version_referencing_the_first(tmp_path, ensemble):
    worker, store, spool = _worker(tmp_path, ensemble)
    studies = sorted({p.parent for p in (ensemble["root"].parent / "dicom" / "valid").rglob("*.dcm")})
    files = next(sorted(s.glob("*.dcm")) for s in studies if len(list(s.glob("*.dcm"))) >= 2)
    key = _receive(store, spool, files[0], now=0)
    store.promote_stable(1, now=5)
    assert worker.run_once() == 1
    first = store.study(key)
    assert first.state == "analysed" and first.version == 1
    first_sr = pydicom.dcmread(first.sr_path)
    _receive(store, spool, files[1], now=10)
    store.promote_stable(1, now=20)
    assert worker.run_once() == 1
    second = store.study(key)
    assert second.version == 2 and second.sr_path != first.sr_path
    result = read_sr_result(pydicom.dcmread(second.sr_path))
    assert result["predecessors"] == [first_sr.SOPInstanceUID]
    assert len(result["referenced_sop_instance_uids"]) == 2
    assert {row["version"] for row in store.outbox(key)} == {1, 2}


def test_a_study_with_nothing_decodable_fails_once_with_its_reason(tmp_path, ensemble):
    worker, store, spool = _worker(tmp_path, ensemble)
    bad = spool.instances / "x" / "bad.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage")
    key = store.record_instance("1.2.3.4", "1.2.3", "MODALITY", "1.2.840.10008.5.1.4.1.1.1", bad, now=0)
    store.promote_stable(0, now=1)
    assert worker.run_once() == 1
    study = store.study(key)
    assert study.state == "failed" and "no radiograph to score" in study.reason
    assert worker.run_once() == 0  # not retried
