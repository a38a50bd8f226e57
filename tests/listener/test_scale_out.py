"""Scale-out failures on one PostgreSQL queue: a worker killed mid-study, the database restarted.

Real parts only: each role is ``python -m listener serve --role ...`` in its own process group,
dcmtk's storescu is the modality, Orthanc the PACS, and the machine's PostgreSQL server is the
queue (a fresh schema per test; skipped, saying why, where none is reachable). The restart test
stops and starts that server with Debian's ``pg_ctlcluster``, so it needs root and runs only
where the cluster is this machine's own.
"""
from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from listener.store import Store
from mura_monai.dicom_out import read_sr_result
from tests.ensemble_support import ENSEMBLE, fitted_ensemble
from tests.listener.conftest import postgres_admin, schema_url
from tests.listener.orthanc import ECHOSCU, STORESCU, OrthancServer, have_orthanc
from tests.listener.review.conftest import wait_for
from tests.listener.support import write_config

pytestmark = pytest.mark.skipif(not have_orthanc() or not Path(STORESCU).is_file(),
                                reason="Debian's orthanc and dcmtk are needed")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ensemble(synth_root, tmp_path_factory):
    return fitted_ensemble(synth_root, tmp_path_factory.mktemp("scale_out_ensemble"))


@pytest.fixture
def pg_url():
    """A fresh schema on the machine's PostgreSQL; dropped over a new connection afterwards (the
    restart test breaks the first one)."""
    admin = postgres_admin()
    schema = f"t_{secrets.token_hex(6)}"
    admin.execute(f"CREATE SCHEMA {schema}")
    admin.close()
    yield schema_url(schema)
    admin = postgres_admin()
    admin.execute("SET lock_timeout = '10s'")
    admin.execute(f"DROP SCHEMA {schema} CASCADE")
    admin.close()


@pytest.fixture
def pacs(tmp_path):
    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.stop()


class Role:
    """One role of the service in a process group of its own (``kill -9`` takes its worker child too)."""

    def __init__(self, config: Path, role: str, name: str, *extra: str) -> None:
        self.log_path = config.parent / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "listener", "serve", "--role", role, *extra, "--config", str(config)], cwd=REPO,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def _config(tmp_path: Path, ensemble: dict, pacs, url: str, lease_s: float) -> Path:
    config = write_config(
        tmp_path / "svc", stable_age_s=0.5,
        destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port, "retry_initial_s": 0.5,
                       "retry_max_s": 2.0}],
        model_bundle=str(ENSEMBLE), model_device="cpu", model_models_dir=str(ensemble["models"]),
        model_members_models_dir=str(ensemble["members"]), model_batch_studies=1)
    config.write_text(config.read_text() + f'\n[store]\nurl = "{url}"\nlease_s = {lease_s}\n')
    return config


def _port(config: Path) -> int:
    return int(next(line.split("=")[1] for line in config.read_text().splitlines() if line.startswith("port")))


def _study(source_files: list[Path], folder: Path, copies: int) -> list[Path]:
    """One study of ``copies`` x the source images (new UIDs): long enough to be caught mid-analysis."""
    folder.mkdir(parents=True)
    study_uid, paths = generate_uid(), []
    for _ in range(copies):
        for source in source_files:
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            paths.append(folder / f"{len(paths):03d}.dcm")
            ds.save_as(paths[-1])
    return paths


def _source(root: Path, index: int = 0) -> list[Path]:
    studies = sorted({p.parent for p in (root.parent / "dicom" / "valid").rglob("*.dcm")})
    return sorted(studies[index].glob("*.dcm"))


def _push(port: int, files) -> subprocess.CompletedProcess:
    return subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=180)


def _echo(port: int) -> bool:
    return subprocess.run([ECHOSCU, "-aec", "MURA_AI", "127.0.0.1", str(port)], capture_output=True).returncode == 0


def _row(url: str, study_uid: str) -> dict | None:
    store = Store(url)
    try:
        row = store.connection().execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return dict(row) if row else None
    finally:
        store.close()


def _pending_exports(url: str) -> int:
    store = Store(url)
    try:
        return store.connection().execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
    finally:
        store.close()


def _srs(pacs, study_uid: str) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(io.BytesIO(pacs.instance_file(i)), stop_before_pixels=True) for i in pacs.instances()]
    return [ds for ds in datasets if ds.Modality == "SR" and ds.StudyInstanceUID == study_uid]


def test_a_worker_killed_mid_study_loses_its_lease_and_another_sends_one_sr(tmp_path, ensemble, pacs, pg_url):
    config = _config(tmp_path, ensemble, pacs, pg_url, lease_s=3.0)
    files = _study(_source(ensemble["root"]), tmp_path / "study", copies=6)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    roles = [Role(config, "scp", "scp"), Role(config, "exporter", "exporter")]
    first = Role(config, "worker", "worker_a", "--worker-id", "host-a")
    try:
        wait_for(lambda: _echo(_port(config)), 90, "the SCP")
        wait_for(lambda: "worker ready" in first.log(), 180, "worker a's models")
        assert _push(_port(config), files).returncode == 0
        claimed = wait_for(lambda: (row := _row(pg_url, uid)) and row["state"] == "analysing" and row, 120,
                           "worker a analysing the study", poll_s=0.05)
        assert claimed["claimed_by"].startswith("host-a")
        first.kill_9()  # mid-study: its lease is not renewed any more
        second = Role(config, "worker", "worker_b", "--worker-id", "host-b")
        roles.append(second)
        done = wait_for(lambda: (row := _row(pg_url, uid)) and row["state"] == "sent" and _pending_exports(pg_url) == 0
                        and row, 240, "the study analysed by worker b and sent")
        assert done["attempts"] == 2 and done["version"] == 1  # taken over once, one result
        assert "host-b" in second.log() and len(_srs(pacs, uid)) == 1
        assert len(pacs.instances()) == len(files) + 1  # a heatmap per image and one SR, nothing twice
    finally:
        codes = [role.stop() for role in roles]
    assert codes == [0] * len(roles)


def _cluster() -> tuple[str, str] | None:
    """This machine's PostgreSQL cluster (version, name) when this test may restart it."""
    if os.geteuid() != 0 or not shutil.which("pg_lsclusters") or not shutil.which("pg_ctlcluster"):
        return None
    lines = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split("\n")
    online = [line.split() for line in lines if "online" in line and " 5432 " in f" {line} "]
    return (online[0][0], online[0][1]) if online else None


def test_postgresql_restarted_under_load_the_roles_reconnect_and_nothing_acknowledged_is_lost(
        tmp_path, ensemble, pacs, pg_url):
    cluster = _cluster()
    if cluster is None:
        pytest.skip("restarting PostgreSQL needs root and this machine's own cluster on port 5432 (pg_ctlcluster)")
    config = _config(tmp_path, ensemble, pacs, pg_url, lease_s=5.0)
    during = _study(_source(ensemble["root"]), tmp_path / "during", copies=4)
    refused = _study(_source(ensemble["root"], 1), tmp_path / "refused", copies=1)
    uid_during, uid_refused = (pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID for f in (during, refused))
    roles = [Role(config, "scp", "scp"), Role(config, "exporter", "exporter"), Role(config, "worker", "worker")]
    try:
        wait_for(lambda: _echo(_port(config)), 90, "the SCP")
        wait_for(lambda: "worker ready" in roles[2].log(), 180, "the worker's models")
        assert _push(_port(config), during).returncode == 0  # acknowledged: must not be lost
        wait_for(lambda: (row := _row(pg_url, uid_during)) and row["state"] == "analysing", 120,
                 "the study under analysis", poll_s=0.05)
        subprocess.run(["pg_ctlcluster", *cluster, "stop", "-m", "fast"], check=True, timeout=60)
        try:
            answer = _push(_port(config), refused)  # the database is away: refused, never acknowledged
            assert answer.returncode != 0
            assert '"status": "0xA700"' in roles[0].log() and "database is unavailable" in roles[0].log()
        finally:
            subprocess.run(["pg_ctlcluster", *cluster, "start"], check=True, timeout=60)
        assert all(role.alive() for role in roles), "a role died with the database instead of waiting for it"
        assert _push(_port(config), refused).returncode == 0  # the modality's retry
        for uid in (uid_during, uid_refused):
            wait_for(lambda uid=uid: (row := _row(pg_url, uid)) and row["state"] == "sent", 300,
                     "both studies analysed and sent after the restart")
        wait_for(lambda: _pending_exports(pg_url) == 0, 120, "the outbox emptied")
        assert len(_srs(pacs, uid_during)) == _row(pg_url, uid_during)["version"]  # one SR per version
        assert len(_srs(pacs, uid_refused)) == 1
        # every instance acknowledged before the restart is in the study's latest SR
        latest = max(_srs(pacs, uid_during), key=lambda ds: int(ds.InstanceNumber))
        full = pydicom.dcmread(io.BytesIO(pacs.instance_file(next(
            i for i in pacs.instances() if pydicom.dcmread(io.BytesIO(pacs.instance_file(i)), stop_before_pixels=True)
            .SOPInstanceUID == latest.SOPInstanceUID))))
        acknowledged = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in during}
        assert set(read_sr_result(full)["referenced_sop_instance_uids"]) == acknowledged
    finally:
        codes = [role.stop() for role in roles]
    assert codes == [0] * len(roles)
