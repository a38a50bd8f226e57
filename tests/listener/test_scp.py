"""The C-STORE SCP with real associations: dcmtk's storescu/echoscu and pynetdicom as modalities."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pydicom
import pydicom.dataset
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from listener.scp import StorageSCP
from listener.spool import Spool
from listener.store import Store
from tests.listener.orthanc import ECHOSCU, STORESCU
from tests.listener.support import load

pytestmark = pytest.mark.skipif(not Path(STORESCU).is_file(), reason="dcmtk (storescu) not installed")


@pytest.fixture
def scp(tmp_path):
    def start(**listener):
        config = load(tmp_path / "svc", **listener)
        store = Store(config.spool_dir / "queue.sqlite3")
        server = StorageSCP(config, store, Spool(config.spool_dir))
        server.start()
        started.append(server)
        return server, store, config
    started = []
    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory):
    from mura_monai.data.synthetic import generate_mura_root

    base = tmp_path_factory.mktemp("scp_synth")
    generate_mura_root(base / "mura", patients=3, seed=0, dicom_dir=base / "dicom")
    return sorted(p.parent for p in (base / "dicom").rglob("*.dcm"))[0]


def _storescu(port: int, *files, aet="MODALITY", extra=()):
    return subprocess.run([STORESCU, "-aet", aet, "-aec", "MURA_AI", *extra, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_echo_and_a_study_stored_as_sent(scp, dicom_study):
    server, store, config = scp()
    echo = subprocess.run([ECHOSCU, "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(server.port)],
                          capture_output=True, timeout=30)
    assert echo.returncode == 0
    files = sorted(dicom_study.glob("*.dcm"))
    result = _storescu(server.port, *files, extra=["-xv"] if any(
        pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed for f in files) else [])
    assert result.returncode == 0, result.stderr
    sent = [pydicom.dcmread(f) for f in files]
    (study,) = store.studies()
    assert study.study_uid == sent[0].StudyInstanceUID and study.calling_ae == "MODALITY" and study.state == "received"
    stored = {i["sop_instance_uid"]: i for i in store.instances(study.key)}
    assert set(stored) == {ds.SOPInstanceUID for ds in sent}
    for ds in sent:
        copy = pydicom.dcmread(stored[ds.SOPInstanceUID]["path"])
        assert copy.PixelData == ds.PixelData and copy.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert not any((config.spool_dir / "tmp").iterdir())


def test_real_cr_in_jpeg_2000_is_kept_compressed(scp):
    data_store = pytest.importorskip("data_store")
    source = Path(data_store.__file__).parent / "data" / "RG3_J2KR.dcm"
    server, store, _ = scp()
    assert _storescu(server.port, source, extra=["-xv"]).returncode == 0
    (study,) = store.studies()
    (instance,) = store.instances(study.key)
    copy = pydicom.dcmread(instance["path"])
    assert copy.file_meta.TransferSyntaxUID == pydicom.dcmread(source).file_meta.TransferSyntaxUID
    assert copy.file_meta.TransferSyntaxUID.is_compressed


def _cr(rows=8, columns=8, pixels=None, study_uid=True) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    if study_uid:
        ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "SECRET^PATIENT", "SECRET-ID-123", "CR"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, columns, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = pixels if pixels is not None else bytes(rows * columns * 2)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _send(port: int, datasets, aet="MODALITY"):
    ae = AE(ae_title=aet)
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MURA_AI")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_bad_instances_get_failure_statuses_and_the_service_goes_on(scp, caplog):
    server, store, _ = scp()
    caplog.set_level(logging.INFO, logger="listener.scp")
    truncated = _cr(pixels=bytes(10))           # rows x columns say 128 bytes
    no_study = _cr(study_uid=False)
    no_pixels = _cr()
    del no_pixels.PixelData
    good = _cr()
    statuses = _send(server.port, [truncated, no_study, no_pixels, good])
    assert statuses[0] == 0xA900 and statuses[1] == 0xC000 and statuses[2] == 0xA900
    assert statuses[3] == 0x0000
    (study,) = store.studies()
    assert [i["sop_instance_uid"] for i in store.instances(study.key)] == [good.SOPInstanceUID]
    log = caplog.text
    assert "SECRET" not in log and "instance refused" in log


def test_unknown_calling_ae_is_rejected(scp, dicom_study):
    server, store, _ = scp(allowed_calling_aets=["MODALITY"])
    result = _storescu(server.port, sorted(dicom_study.glob("*.dcm"))[0], aet="INTRUDER", extra=["-xv"])
    assert result.returncode != 0
    assert store.studies() == []
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", server.port, ae_title="MURA_AI").is_rejected
    assert _send(server.port, [_cr()], aet="MODALITY") == [0]


def test_disk_reserve_answers_out_of_resources(scp):
    server, store, _ = scp(min_free_disk_mb=10**9)
    assert _send(server.port, [_cr()]) == [0xA700]
    assert store.studies() == []


def test_non_radiograph_sop_class_is_refused_at_association(scp):
    """An SR (or anything not a plain radiograph) has no presentation context here."""
    from pynetdicom.sop_class import ComprehensiveSRStorage

    server, store, _ = scp()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComprehensiveSRStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MURA_AI")
    assert assoc.is_established
    try:
        assert all(cx.abstract_syntax != ComprehensiveSRStorage for cx in assoc.accepted_contexts)
    finally:
        assoc.release()
    assert store.studies() == []


@pytest.mark.skipif(not Path("/usr/bin/openssl").is_file(), reason="openssl CLI needed to make a test certificate")
def test_tls_association(scp, tmp_path):
    import ssl

    cert, key = tmp_path / "svc" / "cert.pem", tmp_path / "svc" / "key.pem"
    cert.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server, store, _ = scp(tls_cert="cert.pem", tls_key="key.pem")
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    client.check_hostname = False
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MURA_AI", tls_args=(client, None))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    plain = AE(ae_title="MODALITY")
    plain.add_requested_context(Verification)
    assert not plain.associate("127.0.0.1", server.port, ae_title="MURA_AI").is_established  # no TLS, no talk
