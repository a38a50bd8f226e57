"""Clients the project did not write, against one running listener beside one Orthanc: dcmtk's
echoscu, storescu, findscu and movescu, pynetdicom as a modality, and Orthanc itself pushing
as a modality (REST ``/modalities/{name}/store``). The conformance corpus goes through the same
listener: every scoreable study comes back to Orthanc as an SR and heatmaps that pass dciodvfy;
the others get the documented failure (a DIMSE status, or a reason in `mura-listener status`)."""
from __future__ import annotations

import dataclasses
import io
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000, JPEG2000Lossless, generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from mura_monai.dicom_out import read_sr_result
from tests.conformance.corpus import build_corpus
from tests.dicom_out.dciodvfy import dciodvfy_errors
from tests.ensemble_support import one_member_ensemble
from tests.listener.orthanc import ECHOSCU, STORESCU, OrthancServer, free_port, have_orthanc
from tests.listener.support import Listener, write_config

FINDSCU, MOVESCU = "/usr/bin/findscu", "/usr/bin/movescu"
_SC = "1.2.840.10008.5.1.4.1.1.7"
_STORESCU_OPTION = {  # storescu's option proposing each compressed transfer syntax
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2": "-xi"}
_ONE_SR_ONE_SC = ["Comprehensive SR Storage", "Secondary Capture Image Storage"]
pytestmark = pytest.mark.skipif(not have_orthanc() or not Path(STORESCU).is_file(),
                                reason="Debian's orthanc and dcmtk are needed")
# Every corpus entry a radiography modality can send goes through the listener: CR and DX in every
# transfer syntax the listener accepts (explicit VR big endian, retired, is not among them: storescu
# then sends the file as little endian, as senders do). Another modality's storage class is
# refused at association.
_NOT_ACCEPTED = ("mr_small", "ct_small", "us_rgb", "ot_secondary_capture")


@pytest.fixture(scope="module")
def service(synth_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("clients")
    # one small member: every corpus entry is scored and explained, and the clients are what is tested
    ensemble = one_member_ensemble(synth_root, base / "ensemble")
    port = free_port()
    pacs = OrthancServer(base / "orthanc", modalities={"mura": ["MURA_AI", "127.0.0.1", port]}).start()
    config = write_config(
        base / "svc", port=port, destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
        model_bundle=str(ensemble["bundle"]), model_device="cpu", model_models_dir=str(ensemble["models"]),
        model_members_models_dir=str(ensemble["members"]))
    with pytest.MonkeyPatch.context() as env:  # one torch thread in the service: it shares 2 cores with the suite
        env.setenv("OMP_NUM_THREADS", "1")
        listener = Listener(config)
    corpus = {e.name: e for e in build_corpus(base / "corpus")}
    yield listener, pacs, corpus, base
    listener.stop()
    pacs.stop()


def _own_study(entry, folder: Path):
    """The entry as a study of its own: corpus entries derived from one real file share its study,
    and each must be analysed, answered and checked alone. Only the UIDs change; pixel data and
    transfer syntax stay as encoded."""
    ds = pydicom.dcmread(entry.path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / entry.path.name, enforce_file_format=True)
    return dataclasses.replace(entry, path=folder / entry.path.name)


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _settled(listener: Listener, study_uids, timeout_s: float = 180) -> dict[str, dict]:
    """Each study's status row once it is sent or failed (the worker's progress, polled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = {row["study"]: row for row in listener.status()}
        done = {uid: rows[uid] for uid in study_uids if rows.get(uid, {}).get("state") in ("sent", "failed")}
        if len(done) == len(study_uids) or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


def _results_in_pacs(pacs: OrthancServer, study_uid: str) -> list[pydicom.Dataset]:
    ids = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    found = [pydicom.dcmread(io.BytesIO(pacs.instance_file(i))) for i in ids]
    return [ds for ds in found if ds.Modality == "SR" or ds.SOPClassUID == _SC]


def _alive(listener: Listener) -> bool:
    return subprocess.run([ECHOSCU, "-aec", "MURA_AI", "127.0.0.1", str(listener.port)],
                          capture_output=True, timeout=30).returncode == 0


def test_echoscu_is_answered(service):
    listener, *_ = service
    assert _alive(listener)


def test_the_corpus_through_storescu_comes_back_valid_or_refused(service, tmp_path):
    listener, pacs, corpus, _ = service
    entries = [_own_study(entry, tmp_path / "sent") for name, entry in corpus.items() if name not in _NOT_ACCEPTED]
    assert len(entries) == len(corpus) - len(_NOT_ACCEPTED)
    # One association per transfer syntax, as each modality sends in its own, with the storescu
    # option that proposes it (storescu offers only uncompressed syntaxes unless told); -nh goes
    # on past a refused instance.
    by_syntax: dict[str, list[str]] = {}
    for entry in entries:
        syntax = pydicom.dcmread(entry.path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        by_syntax.setdefault(str(syntax), []).append(str(entry.path))
    output = ""
    for syntax, files in by_syntax.items():
        result = subprocess.run([STORESCU, _STORESCU_OPTION.get(syntax, "-xe"), "-nh", "-v", "-aet", "MODALITY", "-aec",
                                 "MURA_AI", "127.0.0.1", str(listener.port), *files],
                                capture_output=True, text=True, timeout=180)
        output += result.stdout + result.stderr
    # all stored but one: no pixel data gets 0xA900, which dcmtk names
    assert output.count("Received Store Response (Success)") == len(entries) - 1
    assert output.count("Received Store Response (Error: DataSetDoesNotMatchSOPClass)") == 1
    expected = [e for e in entries if e.name != "cr_no_pixel_data"]
    rows = _settled(listener, [_study_uid(e.path) for e in expected])
    assert len(rows) == len(expected)
    invalid = {}
    for entry in expected:
        row = rows[_study_uid(entry.path)]
        if not entry.scored:
            assert row["state"] == "failed" and entry.refusal in (row["reason"] or ""), (entry.name, row)
            continue
        assert row["state"] == "sent", (entry.name, row)
        arrived = _results_in_pacs(pacs, _study_uid(entry.path))
        assert sorted(ds.SOPClassUID.name for ds in arrived) == _ONE_SR_ONE_SC, entry.name
        source = pydicom.dcmread(entry.path, stop_before_pixels=True)
        for k, ds in enumerate(arrived):
            path = tmp_path / f"{entry.name}_{k}.dcm"
            ds.save_as(path)
            if dciodvfy_errors(path):
                invalid[path.name] = dciodvfy_errors(path)
            assert str(ds.PatientName) == str(source.PatientName) and ds.PatientID == source.PatientID
        sr = next(ds for ds in arrived if ds.Modality == "SR")
        assert read_sr_result(sr)["referenced_sop_instance_uids"] == [source.SOPInstanceUID]
    assert invalid == {}
    # another modality's storage class finds no presentation context at all
    for name in _NOT_ACCEPTED:
        other = subprocess.run([STORESCU, "-nh", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(listener.port),
                                str(corpus[name].path)], capture_output=True, text=True, timeout=60)
        assert "no presentation context" in (other.stdout + other.stderr).lower(), name
    assert _alive(listener)


@pytest.mark.parametrize("tool, model", [(FINDSCU, "-P"), (MOVESCU, "-P")])
def test_query_and_retrieve_are_refused_and_the_service_goes_on(service, tool, model):
    """The listener is a Storage SCP only: a C-FIND or C-MOVE finds no accepted presentation
    context, dcmtk says so and exits non-zero, and stores still work afterwards."""
    listener, *_ = service
    result = subprocess.run([tool, model, "-aet", "MODALITY", "-aec", "MURA_AI", "-k", "QueryRetrieveLevel=PATIENT",
                             "-k", "PatientID=CONF000", "127.0.0.1", str(listener.port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "no acceptable presentation contexts" in (result.stdout + result.stderr).lower()
    assert _alive(listener)


def test_pynetdicom_as_a_modality(service):
    """A modality that also proposes query/retrieve in the same association, as many do: pynetdicom's
    acceptor rejects each context it does not support with result 0x03 (abstract syntax not
    supported), the association stands, and its stores succeed."""
    listener, pacs, corpus, _ = service
    ae = AE(ae_title="PYNETDICOM")
    ae.requested_contexts = StoragePresentationContexts[:120]
    for sop_class in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation):
        for syntax in (JPEG2000Lossless, JPEG2000):
            ae.add_requested_context(sop_class, syntax)
    query = (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove)
    for sop_class in query:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="MURA_AI")
    assert assoc.is_established
    refused = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
    assert {refused.get(sop_class) for sop_class in query} == {0x03}
    with pytest.raises(ValueError, match="No presentation context"):
        next(assoc.send_c_find(pydicom.Dataset(), StudyRootQueryRetrieveInformationModelFind))
    sent = [corpus["dx_both_lateralities"], corpus["cr_jpeg2000_lossy"]]
    statuses = [assoc.send_c_store(pydicom.dcmread(e.path)).Status for e in sent]
    assoc.release()
    assert statuses == [0, 0]
    rows = _settled(listener, [_study_uid(e.path) for e in sent])
    assert [rows[_study_uid(e.path)]["state"] for e in sent] == ["sent", "sent"]
    for entry in sent:
        assert sorted(ds.SOPClassUID.name for ds in _results_in_pacs(pacs, _study_uid(entry.path))) == _ONE_SR_ONE_SC


def test_orthanc_pushes_a_study_as_a_modality_and_gets_the_results_back(service):
    listener, pacs, corpus, _ = service
    entry = corpus["dx_private_tags"]
    uploaded = pacs.post("/instances", entry.path.read_bytes())
    job = pacs.post("/modalities/mura/store", {"Resources": [uploaded["ID"]], "Synchronous": True})
    assert job.get("FailedInstancesCount", 0) == 0 and job.get("InstancesCount", 1) == 1
    (row,) = _settled(listener, [_study_uid(entry.path)]).values()
    assert row["state"] == "sent" and row["calling_ae"] == "ORTHANC"
    arrived = _results_in_pacs(pacs, _study_uid(entry.path))
    assert sorted(ds.SOPClassUID.name for ds in arrived) == _ONE_SR_ONE_SC
