"""Several waiting studies analysed together: the store hands them out within ``[model]
batch_studies`` and ``batch_images``, their images share the networks' batches, and each study
still gets the result, outputs and state it would get alone, failing or losing its lease alone."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from listener.config import ListenerConfig, ModelSettings, StoreSettings
from listener.spool import Spool
from listener.store import Store
from listener.worker import Worker, _Scored
from mura_monai.ensemble_predictor import EnsemblePredictor
from mura_monai.results import StudyResult
from tests.ensemble_support import ENSEMBLE, fitted_ensemble, one_member_ensemble
from tests.listener.support import load, receive_files

_RESULT = StudyResult(study="1.2.3", body_part="XR_WRIST", probability=0.2, abnormal=False, threshold=0.5)


def _waiting(store: Store, images: list[int], now: float = 0.0) -> list[str]:
    """One waiting study per entry, with that many instances, oldest first."""
    keys = []
    for i, count in enumerate(images):
        for j in range(count):
            keys.append(store.record_instance(f"1.{i}.{j}", f"9.{i}", "MOD", "cr", f"p{i}.{j}", now=now + i * 0.01))
    store.promote_stable(0, now=now + len(images))
    return list(dict.fromkeys(keys))


# -- the store hands out batches ------------------------------------------------------------------
def test_claim_many_takes_the_oldest_studies_within_both_limits(store_url):
    store = Store(store_url)
    keys = _waiting(store, [1] * 5)
    batches = [[s.key for s in store.claim_many("w1", 2, lease_s=10, now=100.0)] for _ in range(4)]
    assert batches == [keys[:2], keys[2:4], keys[4:], []]
    study = store.study(keys[0])
    assert (study.state, study.claimed_by, study.lease_until, study.attempts) == ("analysing", "w1", 110.0, 1)

    other = Store(store_url)
    sized = _waiting(other, [2, 2, 3, 1, 6, 1], now=1000.0)
    taken = [[s.key for s in other.claim_many("w2", 8, lease_s=10, max_images=4, now=1100.0)] for _ in range(5)]
    # stops at the study that would not fit (FIFO, no skipping ahead); a larger one goes alone, whole
    assert taken == [sized[:2], sized[2:4], sized[4:5], sized[5:], []]


def test_claim_many_takes_over_expired_leases_as_claim_does(store_url):
    store = Store(store_url)
    first, second = _waiting(store, [1, 1])
    assert [s.key for s in store.claim_many("a", 8, lease_s=10, now=100.0)] == [first, second]
    assert store.claim_many("b", 8, lease_s=10, now=105.0) == []
    assert store.heartbeat(second, "a", 10, now=105.0)  # renewed to 115; the first runs out at 110
    taken = store.claim_many("b", 8, lease_s=10, now=111.0)
    assert [(s.key, s.claimed_by, s.attempts) for s in taken] == [(first, "b", 2)]


# -- the worker: leases over the whole batch ------------------------------------------------------
def test_the_leases_of_every_study_in_a_batch_are_renewed(store_url, caplog):
    store = Store(store_url)
    config = ListenerConfig(store=StoreSettings(lease_s=1.5))
    keys = _waiting(store, [1, 1, 1], now=time.time() - 100)
    rival = Store(store_url)
    taken: list[str] = []
    leases: dict[str, list[float]] = {key: [] for key in keys}

    class Slow(Worker):
        def score(self, paths):
            return {key: _Scored([], np.zeros((0, 1)), []) for key in paths}

        def analyse(self, study, scored=None):
            assert scored is not None  # scored with its batch
            deadline = time.monotonic() + 1.2  # the batch outlives a lease twice over
            while time.monotonic() < deadline:
                taken.extend(s.key for s in rival.claim_many("rival", 8, lease_s=60))
                for key in keys:
                    leases[key].append(rival.study(key).lease_until or 0.0)
                time.sleep(0.2)
            store.finish(study.key, _RESULT, ["sr"], ["PACS@h:1"], 0, "sr", worker_id=self.worker_id)
            return 1, _RESULT, None

    worker = Slow(config, store, predictor=object(), worker_id="this-host:1/1")
    with caplog.at_level(logging.INFO, logger="listener.worker"):
        assert worker.run_once() == 3
    assert taken == []
    assert [store.study(key).state for key in keys] == ["analysed"] * 3
    assert max(leases[keys[-1]]) > min(leases[keys[-1]]) + 1  # the last one written was renewed while it waited
    messages = [record.getMessage() for record in caplog.records]
    assert not any("taken over" in m for m in messages)  # a study finished is not one lost
    assert messages.count("study analysed") == 3 and messages.count("batch analysed") == 1
    batch = next(r for r in caplog.records if r.getMessage() == "batch analysed")
    assert (batch.studies, batch.images) == (3, 3) and batch.seconds >= 3.0


# -- the worker with a real ensemble ---------------------------------------------------------------
@pytest.fixture(scope="module")
def small(synth_root, tmp_path_factory):
    """One small member: what is tested is the batching around the networks."""
    ensemble = one_member_ensemble(synth_root, tmp_path_factory.mktemp("batch_ensemble"))
    ensemble["predictor"] = EnsemblePredictor(ensemble["bundle"], device="cpu", models_dir=ensemble["models"],
                                              members_models_dir=ensemble["members"])
    return ensemble


@pytest.fixture(scope="module")
def pair(synth_root, tmp_path_factory):
    """The service's default ensemble (two members), for the equivalence of a batch and one by one."""
    ensemble = fitted_ensemble(synth_root, tmp_path_factory.mktemp("batch_pair"))
    ensemble["bundle"] = ENSEMBLE
    ensemble["predictor"] = EnsemblePredictor(ENSEMBLE, device="cpu", models_dir=ensemble["models"],
                                              members_models_dir=ensemble["members"])
    return ensemble


class _Recording:
    """The predictor, with the images of each call that runs the networks written down."""

    def __init__(self, predictor) -> None:
        self.predictor, self.calls = predictor, []
        self.poisoned: str | None = None  # a file whose decoding breaks whatever batch it is in

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def member_probabilities(self, paths, **kwargs):
        self.calls.append((len(paths), kwargs.get("batch_size")))
        if self.poisoned in map(str, paths):
            raise MemoryError("decoder")
        return self.predictor.member_probabilities(paths, **kwargs)


def _worker(folder: Path, store_url: str | None, ensemble: dict, **model):
    config = load(folder, model_bundle=str(ensemble["bundle"]), model_device="cpu",
                  model_models_dir=str(ensemble["models"]), model_members_models_dir=str(ensemble["members"]),
                  destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}],
                  **{f"model_{k}": v for k, v in model.items()})
    store = Store(store_url or config.spool_dir / "queue.sqlite3")
    predictor = _Recording(ensemble["predictor"])
    return Worker(config, store, predictor=predictor), store, Spool(config.spool_dir), predictor


def _studies(ensemble) -> list[list[Path]]:
    folders = sorted({p.parent for p in (Path(ensemble["root"]).parent / "dicom" / "valid").rglob("*.dcm")})
    return [sorted(folder.glob("*.dcm")) for folder in folders]


def _findings(result: StudyResult) -> dict:
    return {"body_part": result.body_part, "abnormal": result.abnormal, "uncertain": result.uncertain,
            "threshold": result.threshold, "images": sorted(i.sop_instance_uid for i in result.images),
            "unreadable": result.unreadable}


def test_a_batch_gives_each_study_the_result_it_gets_alone(store_url, pair, tmp_path):
    chosen = _studies(pair)[:4]
    alone, alone_store, alone_spool, _ = _worker(tmp_path / "alone", None, pair, batch_studies=1, batch_images=1)
    batch, batch_store, batch_spool, recorded = _worker(tmp_path / "batch", store_url, pair)
    keys = [receive_files(alone_store, alone_spool, files, now=i) for i, files in enumerate(chosen)]
    assert [receive_files(batch_store, batch_spool, files, now=i) for i, files in enumerate(chosen)] == keys
    assert [alone.run_once() for _ in range(5)] == [1, 1, 1, 1, 0]  # one image per forward pass
    assert batch.run_once() == 4 and not batch.run_once()
    assert recorded.calls == [(sum(map(len, chosen)), 16)]  # one pass over every image, in batches of 16
    for key in keys:
        one, many = alone_store.study(key), batch_store.study(key)
        assert (one.state, many.state, one.version, many.version) == ("analysed", "analysed", 1, 1)
        assert _findings(many.result) == _findings(one.result)
        assert many.result.probability == pytest.approx(one.result.probability, abs=1e-5)
        assert many.result.members == pytest.approx(one.result.members, abs=1e-5)
        by_uid = {i.sop_instance_uid: i for i in one.result.images}
        for image in many.result.images:
            assert image.probability == pytest.approx(by_uid[image.sop_instance_uid].probability, abs=1e-5)
            assert image.members == pytest.approx(by_uid[image.sop_instance_uid].members, abs=1e-5)
        assert Path(many.sr_path).is_file() and len(batch_store.outbox(key)) == len(alone_store.outbox(key)) > 0


def test_batches_keep_within_batch_studies_and_batch_images(store_url, small, tmp_path):
    studies = _studies(small)
    large = next(files for files in studies if len(files) >= 3)
    singles = [files[:1] for files in studies if files is not large][:4]
    worker, store, spool, recorded = _worker(tmp_path, store_url, small, batch_studies=2, batch_images=2)
    keys = [receive_files(store, spool, files, now=i) for i, files in enumerate([*singles[:2], large, *singles[2:]])]
    assert [worker.run_once() for _ in range(4)] == [2, 1, 2, 0]
    assert recorded.calls == [(2, 2), (len(large), 2), (2, 2)]  # the large study alone (scored by itself), whole
    assert [store.study(key).state for key in keys] == ["analysed"] * 5
    assert len(store.study(keys[2]).result.images) == len(large)


def test_a_study_that_fails_in_a_batch_fails_alone(store_url, small, tmp_path, monkeypatch, caplog):
    import mura_monai.ensemble_outputs as outputs

    studies = _studies(small)
    worker, store, spool, _ = _worker(tmp_path, store_url, small)
    good = receive_files(store, spool, studies[0][:1], now=0)
    bad_file = spool.instances / "x" / "bad.dcm"
    bad_file.parent.mkdir(parents=True)
    bad_file.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage")
    bad = store.record_instance("1.2.3.4", "1.2.3", "MODALITY", "1.2.840.10008.5.1.4.1.1.1", bad_file, now=1)
    breaks = receive_files(store, spool, studies[1][:1], now=2)
    lost = receive_files(store, spool, studies[2][:1], now=3)
    last = receive_files(store, spool, studies[3][:1], now=4)
    store.promote_stable(0, now=10)
    rival = Store(store_url)
    write = outputs.write_study_sr

    def writing(predictor, result, *args, **kwargs):
        if breaks.endswith(result.study):
            raise RuntimeError("disk full")
        if lost.endswith(result.study):  # another worker took it over meanwhile
            with rival.transaction() as db:
                db.execute("UPDATE studies SET claimed_by='rival' WHERE study_key=?", (lost,))
        return write(predictor, result, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_study_sr", writing)
    with caplog.at_level(logging.INFO, logger="listener.worker"):
        assert worker.run_once() == 5
    states = {key: (store.study(key).state, store.study(key).reason) for key in (good, bad, breaks, lost, last)}
    assert states[good] == states[last] == ("analysed", None)
    assert states[bad][0] == "failed" and "no radiograph to score" in states[bad][1]
    assert states[breaks] == ("waiting", "RuntimeError: disk full")  # retried later
    assert (states[lost][0], store.study(lost).claimed_by, store.study(lost).version) == ("analysing", "rival", 0)
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("study analysed") == 2 and messages.count("batch analysed") == 1
    assert any("result dropped" in m for m in messages)


def test_a_batch_that_cannot_be_scored_together_is_scored_study_by_study(store_url, small, tmp_path):
    studies = _studies(small)
    worker, store, spool, recorded = _worker(tmp_path, store_url, small)
    keys = [receive_files(store, spool, files[:1], now=i) for i, files in enumerate(studies[:3])]
    recorded.poisoned = store.instances(keys[1])[0]["path"]
    assert worker.run_once() == 3
    assert [c[0] for c in recorded.calls] == [3, 1, 1, 1]
    assert [store.study(key).state for key in keys] == ["analysed", "waiting", "analysed"]
    assert store.study(keys[1]).reason == "MemoryError: decoder"


def test_the_batch_settings_are_checked(tmp_path):
    from listener.config import ConfigError

    assert (ModelSettings().batch_images, ModelSettings().batch_studies) == (16, 8)
    with pytest.raises(ConfigError, match="batch_images and batch_studies"):
        load(tmp_path, model_batch_studies=0)
