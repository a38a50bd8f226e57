"""The heatmap pass after the scoring: the worker decodes each file once (the heatmaps use what the
scoring kept, and draw the same pixels as a fresh decode), and ``heatmap_studies`` decides which
studies get heatmaps and secondary captures, while every study gets its SR."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pydicom
import pytest

import mura_monai.data.radiograph_reader as radiograph_reader
from listener.config import ConfigError, ModelSettings
from listener.spool import Spool
from listener.store import Store
from listener.worker import Worker
from mura_monai.dicom_out import read_sr_result
from mura_monai.ensemble_outputs import write_study_outputs
from tests.dicom_out.dciodvfy import dciodvfy_errors
from tests.ensemble_support import ENSEMBLE
from tests.listener.support import load, receive_files


def _studies(ensemble) -> list[list[Path]]:
    folders = sorted({p.parent for p in (Path(ensemble["root"]).parent / "dicom" / "valid").rglob("*.dcm")})
    return [sorted(folder.glob("*.dcm")) for folder in folders]


def _worker(folder: Path, ensemble: dict, predictor=None, **model) -> tuple[Worker, Store, Spool]:
    config = load(folder, model_bundle=str(ENSEMBLE), model_device="cpu", model_models_dir=str(ensemble["models"]),
                  model_members_models_dir=str(ensemble["members"]),
                  destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}],
                  **{f"model_{k}": v for k, v in model.items()})
    store = Store(config.spool_dir / "queue.sqlite3")
    return Worker(config, store, predictor=predictor), store, Spool(config.spool_dir)


def _decodes(monkeypatch) -> Counter:
    """Every radiograph decoded from here on, by path (the real reader runs)."""
    read, counts = radiograph_reader.read_radiograph, Counter()

    def counting(path):
        counts[str(path)] += 1
        return read(path)

    monkeypatch.setattr(radiograph_reader, "read_radiograph", counting)
    return counts


def _pixels(paths) -> list[bytes]:
    return [pydicom.dcmread(p).PixelData for p in sorted(map(Path, paths)) if Path(p).name.startswith("sc_")]


def test_the_worker_decodes_each_file_once_and_draws_what_a_fresh_decode_draws(tmp_path, ensemble, predictor,
                                                                              monkeypatch):
    worker, store, spool = _worker(tmp_path / "svc", ensemble, predictor)
    studies = [files for files in _studies(ensemble) if len(files) >= 2][:3]
    counts = _decodes(monkeypatch)
    batched = [receive_files(store, spool, files, now=i) for i, files in enumerate(studies[:2])]
    assert worker.run_once() == 2  # scored together: the batch's path
    alone = receive_files(store, spool, studies[2], now=10)
    assert worker.run_once() == 1  # scored by itself: the single-study path
    instances = [i["path"] for key in [*batched, alone] for i in store.instances(key)]
    assert counts == Counter({str(path): 1 for path in instances})

    for key in [batched[0], alone]:
        study = store.study(key)
        assert study.state == "analysed"
        kept = study.result
        fresh = write_study_outputs(predictor, dataclasses.replace(kept, dicom_outputs=None), None,
                                    tmp_path / "fresh" / key)  # nothing kept: every image decoded again
        assert counts[kept.images[0].path] == 2
        assert len(_pixels(kept.dicom_outputs)) == len(kept.images) > 0
        assert _pixels(kept.dicom_outputs) == _pixels(fresh.dicom_outputs)
        ours, theirs = (read_sr_result(pydicom.dcmread(r.sr_path)) for r in (kept, fresh))
        assert ours["probability"] == theirs["probability"] == pytest.approx(kept.probability, abs=1e-4)
        assert ours["images"] == theirs["images"]


# which studies each policy draws heatmaps for: (normal, normal but uncertain, abnormal)
POLICIES = {"all": (True, True, True), "abnormal": (False, False, True), "uncertain": (False, True, True),
            "none": (False, False, False)}


def _called(predictor, records, P, monkeypatch, *, abnormal: bool, uncertain: bool):
    """The study as the ensemble calls it once its thresholds make it abnormal or normal, and its
    uncertainty level makes it doubtful or not."""
    fitted = predictor.fitted
    threshold = -1.0 if abnormal else 2.0
    monkeypatch.setattr(fitted, "thresholds", {part: dict.fromkeys(points, threshold)
                                               for part, points in fitted.thresholds.items()})
    monkeypatch.setitem(predictor.settings, "uncertain_level", 0.0 if uncertain else 2.0)
    (study,) = predictor.studies(records, P)
    assert (study.abnormal, study.uncertain) == (abnormal, uncertain)
    return study


def test_heatmap_studies_draws_heatmaps_for_the_studies_it_names_and_an_sr_for_every_one(
        tmp_path, ensemble, predictor, monkeypatch):
    files = min(_studies(ensemble), key=len)
    decoded: dict = {}
    records, P = predictor.member_probabilities(files, keep=decoded)
    assert sorted(decoded) == sorted(map(str, files))
    calls = [_called(predictor, records, P, monkeypatch, abnormal=a, uncertain=u)
             for a, u in ((False, False), (False, True), (True, False))]
    monkeypatch.undo()
    counts = _decodes(monkeypatch)
    for policy, drawn in POLICIES.items():
        monkeypatch.setitem(predictor.settings, "heatmap_studies", policy)  # read from the ensemble's settings
        for n, (study, wanted) in enumerate(zip(calls, drawn)):
            heat = tmp_path / policy / str(n)
            result = write_study_outputs(predictor, study, heat, None, decoded=decoded)
            assert all((image.heatmap is not None) == wanted for image in result.images), (policy, n)
            assert len(list(heat.rglob("*.png"))) == (len(files) if wanted else 0), (policy, n)
        if policy == "abnormal":  # the SR for both, secondary captures for the abnormal one only
            normal, abnormal = (write_study_outputs(predictor, calls[n], None, tmp_path / "dicom" / str(n), decoded=decoded)
                                for n in (0, 2))
            assert [Path(p).name for p in normal.dicom_outputs] == ["sr.dcm"]
            assert read_sr_result(pydicom.dcmread(normal.sr_path))["finding"] == "normal"
            assert Path(abnormal.sr_path).is_file() and len(_pixels(abnormal.dicom_outputs)) == len(files)
    assert counts == Counter()  # every heatmap drawn from what the scoring kept

    overridden = write_study_outputs(predictor, calls[0], tmp_path / "o", None, decoded=decoded,
                                     heatmap_studies="all")  # the ensemble says none; the caller's word wins
    assert all(image.heatmap for image in overridden.images)
    with pytest.raises(ValueError, match="heatmap_studies must be one of all, abnormal, uncertain, none; got 'normal'"):
        write_study_outputs(predictor, calls[0], None, None, heatmap_studies="normal")


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_a_worker_told_none_sends_an_sr_alone_that_dciodvfy_accepts(tmp_path, ensemble, predictor, monkeypatch):
    worker, store, spool = _worker(tmp_path / "svc", ensemble, predictor, heatmap_studies="none")
    assert worker.config.model.heatmap_studies == "none"
    files = next(files for files in _studies(ensemble) if len(files) >= 2)
    counts = _decodes(monkeypatch)
    key = receive_files(store, spool, files, now=0)
    assert worker.run_once() == 1
    study = store.study(key)
    assert study.state == "analysed" and [Path(p).name for p in study.result.dicom_outputs] == ["sr.dcm"]
    assert [Path(row["path"]).name for row in store.outbox(key)] == ["sr.dcm"]
    assert all(image.heatmap is None for image in study.result.images)
    assert not list(spool.root.rglob("*.png"))
    assert dciodvfy_errors(study.sr_path) == []
    assert len(read_sr_result(pydicom.dcmread(study.sr_path))["referenced_sop_instance_uids"]) == len(files)
    assert sorted(counts.values()) == [1] * len(files)

    # the review app's study page and worklist take images without a heatmap; the heatmap is a 404
    from starlette.testclient import TestClient

    from listener.review.app import create_app

    with TestClient(create_app(worker.config)) as client:
        (row,) = client.get("/datastore/studies").json()["studies"]
        assert row["analysed"] and row["finding"] in ("normal", "abnormal")
        page = client.get(f"/datastore/study?study={row['id']}").json()
        assert [image["heatmap"] for image in page["images"]] == [False] * len(files)
        missing = client.get(f"/datastore/heatmap?image={page['images'][0]['id']}")
        assert missing.status_code == 404 and "no heatmap for this image" in missing.text
        assert client.get(f"/datastore/image?image={page['images'][0]['id']}").status_code == 200


def test_heatmap_studies_in_listener_toml_is_checked(tmp_path):
    assert ModelSettings().heatmap_studies == "all" and ModelSettings().heatmaps is True
    assert load(tmp_path / "a", model_heatmap_studies="uncertain").model.heatmap_studies == "uncertain"
    with pytest.raises(ConfigError, match=r"\[model\] heatmap_studies must be one of all, abnormal, uncertain, none; "
                                          r"got 'abnormals'"):
        load(tmp_path / "b", model_heatmap_studies="abnormals")
