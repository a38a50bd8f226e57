"""Scale-out failures on one PostgreSQL queue: a worker killed mid-study, the database restarted.

Real parts only: each role is ``python -m listener serve --role ...`` in its own process group,
dcmtk's storescu is the modality, Orthanc the PACS, and the machine's PostgreSQL server is the
queue (a fresh schema per test; skipped, saying why, where none is reachable). The restart test
stops and starts that server with Debian's ``pg_ctlcluster``, so it needs root and runs only
where the cluster is this machine's own.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from listener.store import Store
from mura_monai.dicom_out import read_sr_result
from tests.ensemble_support import ENSEMBLE
from tests.listener.conftest import postgres_admin, schema_url
from tests.listener.orthanc import ECHOSCU, STORESCU, have_orthanc
from tests.listener.review.conftest import wait_for
from tests.listener.support import write_config

pytestmark = pytest.mark.skipif(not have_orthanc() or not Path(STORESCU).is_file(),
                                reason="Debian's orthanc and dcmtk are needed")
REPO = Path(__file__).resolve().parents[2]



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


def test_a_hundred_studies_from_four_modalities_through_two_front_ends_and_three_workers(
        tmp_path, ensemble, pacs, pg_url):
    """Four storescu processes push 100 studies at once, split across two front-ends (same AE
    title, own ports, one spool, one PostgreSQL queue); three workers and one exporter. Every
    acknowledged instance is in exactly one analysis, every study gets one SR, none twice."""
    n_studies = int(os.environ.get("MURA_SCALE_STUDIES", "100"))
    spool = str(tmp_path / "shared-spool")
    configs = []
    for name in ("a", "b"):
        config = _config(tmp_path / name, ensemble, pacs, pg_url, lease_s=30.0)
        text = config.read_text().replace('spool_dir = "spool"', f'spool_dir = "{spool}"')
        config.write_text(text.replace("batch_studies = 1", "batch_studies = 4"))
        configs.append(config)
    sources = [sorted(folder.glob("*.dcm")) for folder in
               sorted({p.parent for p in (ensemble["root"].parent / "dicom" / "valid").rglob("*.dcm")})]
    studies = [_study(sources[k % len(sources)], tmp_path / "studies" / f"{k:03d}", copies=1) for k in range(n_studies)]
    roles = [Role(configs[0], "scp", "scp_a"), Role(configs[1], "scp", "scp_b"),
             *(Role(configs[k % 2], "worker", f"worker_{k}", "--worker-id", f"w{k}") for k in range(3)),
             Role(configs[0], "exporter", "exporter")]
    ports = [_port(config) for config in configs]
    try:
        for port in ports:
            wait_for(lambda port=port: _echo(port), 90, "both front-ends")
        wait_for(lambda: all("worker ready" in role.log() for role in roles[2:5]), 240, "three workers' models")
        acknowledged: dict[str, set[str]] = {}
        queue = list(enumerate(studies))
        lock = threading.Lock()

        def modality(k: int) -> None:  # one of four: its studies alternate between the front-ends
            while True:
                with lock:
                    if not queue:
                        return
                    index, files = queue.pop(0)
                if _push(ports[(index + k) % 2], files).returncode == 0:
                    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
                    with lock:
                        acknowledged[pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID] = uids

        pushers = [threading.Thread(target=modality, args=(k,)) for k in range(4)]
        for thread in pushers:
            thread.start()
        for thread in pushers:
            thread.join()
        assert len(acknowledged) == n_studies

        def all_sent() -> bool:
            store = Store(pg_url)
            try:
                states = [row[0] for row in store.connection().execute("SELECT state FROM studies").fetchall()]
            finally:
                store.close()
            return len(states) == n_studies and set(states) == {"sent"} and _pending_exports(pg_url) == 0

        wait_for(all_sent, 900, f"{n_studies} studies analysed and sent", poll_s=1.0)
        store = Store(pg_url)
        try:
            for uid, sops in acknowledged.items():
                study = next(s for s in store.studies() if s.study_uid == uid)
                assert study.version == 1 and study.result is not None
                assert {image.sop_instance_uid for image in study.result.images} == sops  # each in one analysis
        finally:
            store.close()
        images = sum(len(s) for s in acknowledged.values())
        assert len(pacs.instances()) == images + n_studies  # a heatmap per image, one SR per study, none twice
        analysed_by = [role.log().count('"message": "study analysed"') for role in roles[2:5]]
        assert sum(analysed_by) == n_studies  # each study analysed once, by whichever worker took it
    finally:
        codes = [role.stop() for role in roles]
    assert codes == [0] * len(roles)


def _two_front_ends(tmp_path: Path, ensemble: dict, pacs, pg_url: str, lease_s: float = 30.0) -> list[Path]:
    spool = str(tmp_path / "shared-spool")
    configs = []
    for name in ("a", "b"):
        config = _config(tmp_path / name, ensemble, pacs, pg_url, lease_s=lease_s)
        config.write_text(config.read_text().replace('spool_dir = "spool"', f'spool_dir = "{spool}"'))
        configs.append(config)
    return configs


def test_a_late_instance_through_the_other_front_end_makes_the_next_sr_version(tmp_path, ensemble, pacs, pg_url):
    configs = _two_front_ends(tmp_path, ensemble, pacs, pg_url)
    files = _study(_source(ensemble["root"]), tmp_path / "study", copies=2)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    roles = [Role(configs[0], "scp", "scp_a"), Role(configs[1], "scp", "scp_b"),
             Role(configs[0], "worker", "worker", "--worker-id", "w"), Role(configs[1], "exporter", "exporter")]
    try:
        for config in configs:
            wait_for(lambda config=config: _echo(_port(config)), 90, "both front-ends")
        assert _push(_port(configs[0]), files[:-1]).returncode == 0
        wait_for(lambda: (row := _row(pg_url, uid)) and row["state"] == "sent" and _pending_exports(pg_url) == 0, 240,
                 "the first version sent")
        assert _push(_port(configs[1]), files[-1:]).returncode == 0  # late, and to the other front-end
        wait_for(lambda: (row := _row(pg_url, uid)) and row["version"] == 2 and row["state"] == "sent"
                 and _pending_exports(pg_url) == 0, 240, "the second version sent")
        srs = sorted(_srs(pacs, uid), key=lambda ds: int(ds.InstanceNumber))
        assert len(srs) == 2 and srs[1].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
            .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == srs[0].SOPInstanceUID
    finally:
        codes = [role.stop() for role in roles]
    assert codes == [0] * len(roles)


def test_kill_9_of_a_front_end_mid_association_what_it_acknowledged_is_analysed(tmp_path, ensemble, pacs, pg_url):
    configs = _two_front_ends(tmp_path, ensemble, pacs, pg_url)
    files = _study(_source(ensemble["root"]), tmp_path / "study", copies=12)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    sop_of = {str(f): pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    front = Role(configs[0], "scp", "scp_a")
    roles = [front, Role(configs[1], "scp", "scp_b"), Role(configs[0], "worker", "worker", "--worker-id", "w"),
             Role(configs[1], "exporter", "exporter")]
    try:
        for config in configs:
            wait_for(lambda config=config: _echo(_port(config)), 90, "both front-ends")
        # storescu -v says which file it sends and the status that comes back for it
        modality = subprocess.Popen([STORESCU, "-v", "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1",
                                     str(_port(configs[0])), *map(str, files)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        acknowledged, sending = set(), None
        assert modality.stdout is not None
        for line in modality.stdout:
            if "Sending file:" in line:
                sending = line.split("Sending file:")[1].strip()
            elif "Received Store Response (Success)" in line and sending:
                acknowledged.add(sop_of[sending])
                if len(acknowledged) == 3:
                    front.kill_9()  # mid-association: more files were still to come
        modality.wait(timeout=60)
        assert 3 <= len(acknowledged) < len(files)
        # the other front-end's assembly completes the study; a worker analyses what was acknowledged
        done = wait_for(lambda: (row := _row(pg_url, uid)) and row["state"] == "sent" and _pending_exports(pg_url) == 0
                        and row, 240, "the study assembled by the other front-end, analysed and sent")
        analysed = {image["sop_instance_uid"] for image in json.loads(done["result"])["images"]}
        assert acknowledged <= analysed and len(_srs(pacs, uid)) == 1
    finally:
        codes = [role.stop() for role in roles]  # the killed front-end's code is -9
    assert codes[1:] == [0] * 3
