"""The whole service as a process: storescu pushes a study, the SR and heatmaps land in Orthanc.

Real parts only: `python -m listener` in its own process (worker process inside), dcmtk's storescu
as the modality, Debian's Orthanc as the PACS, dciodvfy on what arrives, kill -9 and restart.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from mura_monai.dicom_out import read_sr_result
from tests.dicom_out.dciodvfy import dciodvfy_errors
from tests.ensemble_support import ENSEMBLE
from tests.listener.orthanc import STORESCU, OrthancServer, free_port, have_orthanc
from tests.listener.support import Listener, status_report, write_config

pytestmark = pytest.mark.skipif(not have_orthanc() or not Path(STORESCU).is_file(),
                                reason="Debian's orthanc and dcmtk are needed")
REPO = Path(__file__).resolve().parents[2]




def _config(tmp_path, ensemble, pacs, **listener):
    return write_config(
        tmp_path / "svc", destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                                         "retry_initial_s": 0.5, "retry_max_s": 2.0}],
        model_bundle=str(ENSEMBLE), model_device="cpu", model_models_dir=str(ensemble["models"]),
        model_members_models_dir=str(ensemble["members"]), **listener)


def _push(port: int, files) -> None:
    result = subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port),
                             *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _study_files(root: Path, index: int = 0) -> list[Path]:
    studies = sorted({p.parent for p in (root.parent / "dicom" / "valid").rglob("*.dcm")})
    return sorted(studies[index].glob("*.dcm"))


def _arrived(pacs: OrthancServer, n: int, timeout_s: float = 180) -> list[pydicom.Dataset]:
    ids = pacs.wait_for_instances(n, timeout_s)
    return [pydicom.dcmread(io.BytesIO(pacs.instance_file(i))) for i in ids]


def test_a_pushed_study_comes_back_as_sr_and_heatmaps(tmp_path, ensemble, pacs):
    listener = Listener(_config(tmp_path, ensemble, pacs))
    try:
        files = _study_files(ensemble["root"])
        _push(listener.port, files)
        arrived = _arrived(pacs, len(files) + 1)
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        srs = [ds for ds in arrived if ds.Modality == "SR"]
        assert len(srs) == 1 and len(arrived) == len(files) + 1
        assert all(ds.StudyInstanceUID == sources[0].StudyInstanceUID for ds in arrived)
        for k, ds in enumerate(arrived):
            path = tmp_path / f"arrived_{k}.dcm"
            ds.save_as(path)
            assert dciodvfy_errors(path) == []
        (row,) = listener.status()
        assert row["state"] == "sent" and row["images"] == len(files) and row["version"] == 1
        assert row["study"] == sources[0].StudyInstanceUID
        log = (tmp_path / "svc" / "listener.log").read_text()
        assert str(sources[0].PatientName) not in log and sources[0].StudyInstanceUID not in log
    finally:
        assert listener.stop() == 0


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _exits(pid: int, timeout_s: float) -> bool:
    """Whether ``pid`` is gone within ``timeout_s`` (not our child: waited on through a pidfd)."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def test_kill_9_after_the_ack_loses_nothing(tmp_path, ensemble, pacs):
    config = _config(tmp_path, ensemble, pacs, stable_age_s=600.0)  # nothing analysed before the kill
    listener = Listener(config)
    files = _study_files(ensemble["root"], 1)
    _push(listener.port, files)  # storescu exits 0: every instance acknowledged
    children = _children(listener.process.pid)
    assert children, "the service runs its worker in a child process"
    listener.process.send_signal(signal.SIGKILL)
    listener.process.wait(timeout=30)
    for child in children:  # no orphaned worker claims studies beside the restarted service's own
        assert _exits(child, timeout_s=60), f"child process {child} outlived the killed service"
    config.write_text(config.read_text().replace("stable_age_s = 600.0", "stable_age_s = 1.0"))
    restarted = Listener(config)
    try:
        arrived = _arrived(pacs, len(files) + 1)
        sr = next(ds for ds in arrived if ds.Modality == "SR")
        referenced = set(read_sr_result(sr)["referenced_sop_instance_uids"])
        assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        (row,) = restarted.status()
        assert row["images"] == len(files) and row["state"] == "sent"
    finally:
        assert restarted.stop() == 0


def test_one_study_over_two_associations_is_analysed_once(tmp_path, ensemble, pacs):
    listener = Listener(_config(tmp_path, ensemble, pacs, stable_age_s=3.0))
    try:
        files = _study_files(ensemble["root"], 2)
        if len(files) < 2:
            files = _study_files(ensemble["root"], 3)
        for f in files:
            _push(listener.port, [f])
        arrived = _arrived(pacs, len(files) + 1)
        assert sum(ds.Modality == "SR" for ds in arrived) == 1
        (row,) = listener.status()
        assert row["version"] == 1 and row["images"] == len(files)
    finally:
        assert listener.stop() == 0


def test_pacs_down_then_up_results_still_arrive(tmp_path, ensemble, pacs):
    pacs.stop()
    listener = Listener(_config(tmp_path, ensemble, pacs))
    try:
        files = _study_files(ensemble["root"], 4)
        _push(listener.port, files)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the worker's progress, seen through the status command
            rows = listener.status()  # the SR is queued first, the heatmap captures when drawn
            if rows and rows[0]["state"] == "analysed" and rows[0]["exports_pending"] == len(files) + 1:
                break
            time.sleep(0.5)
        assert rows[0]["state"] == "analysed" and rows[0]["exports_pending"] == len(files) + 1
        pacs.start()
        arrived = _arrived(pacs, len(files) + 1)
        assert sum(ds.Modality == "SR" for ds in arrived) == 1
    finally:
        assert listener.stop() == 0


def test_real_cr_including_jpeg_2000_comes_back_from_the_service(tmp_path, ensemble, pacs):
    data_store = pytest.importorskip("data_store")
    data = Path(data_store.__file__).parent / "data"
    files = [data / "RG1_J2KR.dcm", data / "RG3_UNCR.dcm"]  # two studies, MONOCHROME1, no pixel spacing
    listener = Listener(_config(tmp_path, ensemble, pacs))
    try:
        _push(listener.port, files)
        arrived = _arrived(pacs, 4)
        assert sorted(ds.Modality for ds in arrived) == ["OT", "OT", "SR", "SR"]
        for k, ds in enumerate(arrived):
            path = tmp_path / f"arrived_{k}.dcm"
            ds.save_as(path)
            assert dciodvfy_errors(path) == []
    finally:
        assert listener.stop() == 0


def test_a_crashed_worker_is_restarted_and_the_study_analysed(tmp_path, ensemble, pacs):
    listener = Listener(_config(tmp_path, ensemble, pacs))
    try:
        log = tmp_path / "svc" / "listener.log"
        deadline = time.monotonic() + 120
        while b"worker ready" not in log.read_bytes():  # the worker process has loaded the ensemble
            assert time.monotonic() < deadline
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(listener.process.pid), "-f", "spawn_main"],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) == 1  # the worker (not multiprocessing's resource tracker)
        os.kill(int(children[0]), signal.SIGKILL)
        files = _study_files(ensemble["root"], 5)
        _push(listener.port, files)
        arrived = _arrived(pacs, len(files) + 1)
        assert sum(ds.Modality == "SR" for ds in arrived) == 1
        assert b"worker process exited; restarting it" in log.read_bytes()
    finally:
        assert listener.stop() == 0


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_the_service_on_postgresql(tmp_path, ensemble, pacs, store_url):
    """The same round trip with ``[store] url``: SCP, worker process, exporter and the status
    command all meet in PostgreSQL, and the spool holds no database."""
    config = _config(tmp_path, ensemble, pacs)
    config.write_text(config.read_text() + f'\n[store]\nurl = "{store_url}"\nlease_s = 20\n')
    listener = Listener(config)
    try:
        files = _study_files(ensemble["root"], 2)
        _push(listener.port, files)
        arrived = _arrived(pacs, len(files) + 1)
        assert sum(ds.Modality == "SR" for ds in arrived) == 1
        (row,) = listener.status()
        assert row["state"] == "sent" and row["images"] == len(files) and row["version"] == 1
        assert not list((tmp_path / "svc" / "spool").glob("queue.sqlite3*"))
    finally:
        assert listener.stop() == 0


def _scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample name with its labels: value}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_every_role_serves_its_metrics(tmp_path, ensemble, pacs):
    """``--role all``: the service's /metrics on metrics_port (SCP, exporter, queue), its worker
    process's on the port after it (analyses, queue)."""
    port = free_port()
    while True:  # the worker's port is the next one: it must be free too
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    listener = Listener(_config(tmp_path, ensemble, pacs, metrics_port=port))
    try:
        files = _study_files(ensemble["root"], 6)
        _push(listener.port, files)
        arrived = _arrived(pacs, len(files) + 1)
        assert len(arrived) == len(files) + 1
        service = _scrape(port)
        destination = f'destination="{pacs.aet}@127.0.0.1:{pacs.dicom_port}"'
        assert service['mura_instances_received_total{outcome="stored"}'] == len(files)
        deadline = time.monotonic() + 30  # the exporter counts a file once the store has it as sent
        while service.get(f"mura_exports_total{{{destination}}}", 0) < len(files) + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
            service = _scrape(port)
        assert service[f"mura_exports_total{{{destination}}}"] == len(files) + 1
        worker = _scrape(port + 1)
        assert worker['mura_studies_analysed_total{outcome="analysed"}'] == 1
        assert worker["mura_analysis_seconds_count"] == 1 and worker["mura_analysis_seconds_sum"] > 0
        for metrics in (service, worker):
            assert metrics['mura_queue_depth{state="sent"}'] == 1 and metrics['mura_queue_depth{state="waiting"}'] == 0
            assert metrics["mura_oldest_waiting_seconds"] == 0
    finally:
        assert listener.stop() == 0


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_roles_apart_two_front_ends_two_workers_one_exporter(tmp_path, ensemble, pacs, store_url):
    """Five processes on one PostgreSQL store and one spool: each study gets one SR, one whose
    instances reached both front-ends too; status lists five live roles; SIGTERM ends each."""
    spool = str(tmp_path / "shared-spool")
    configs = []
    for name in ("a", "b"):  # two front-ends: same AE title, own ports, same spool and store
        config = _config(tmp_path / name, ensemble, pacs, spool_dir=spool, stable_age_s=3.0)
        config.write_text(config.read_text() + f'\n[store]\nurl = "{store_url}"\nlease_s = 30\n')
        configs.append(config)
    folders = sorted({p.parent for p in (ensemble["root"].parent / "dicom" / "valid").rglob("*.dcm")})
    studies = [files for files in (sorted(f.glob("*.dcm")) for f in folders) if len(files) >= 2][:3]
    assert len(studies) == 3
    front = [Listener(configs[0], "serve", "--role", "scp"), Listener(configs[1], "serve", "--role", "scp")]
    rest = [Listener(configs[0], "serve", "--role", "worker", "--device", "cpu", "--worker-id", "w1", log="w1.log"),
            Listener(configs[1], "serve", "--role", "worker", "--device", "cpu", "--worker-id", "w2", log="w2.log"),
            Listener(configs[0], "serve", "--role", "exporter", log="exporter.log")]
    processes = front + rest
    try:
        _push(front[0].port, studies[0])
        _push(front[1].port, studies[1])
        half = len(studies[2]) // 2
        _push(front[0].port, studies[2][:half])
        _push(front[1].port, studies[2][half:])
        arrived = _arrived(pacs, sum(map(len, studies)) + 3, timeout_s=300)
        srs = Counter(ds.StudyInstanceUID for ds in arrived if ds.Modality == "SR")
        expected = {pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID for files in studies}
        assert set(srs) == expected and set(srs.values()) == {1}
        report = status_report(configs[0])
        assert sorted((s["state"], s["images"], s["version"]) for s in report["studies"]) == sorted(
            ("sent", len(files), 1) for files in studies)
        deadline = time.monotonic() + 60  # a worker beats from its process once spawned, and again once ready
        while sorted(r["role"] for r in report["roles"] if r["state"] == "running") != [
                "exporter", "scp", "scp", "worker", "worker"] or any(
                r["details"].get("state") != "ready" for r in report["roles"] if r["role"] == "worker"):
            assert time.monotonic() < deadline, report["roles"]
            time.sleep(0.5)
            report = status_report(configs[1], "--roles")
        assert {r["device"] for r in report["roles"] if r["role"] == "worker"} == {"cpu"}
        # the members were never exported: auto fell back to torch, and status says so
        assert [r["details"]["backends"] for r in report["roles"] if r["role"] == "worker"] == [
            {"densenet169_wbce": "torch", "resnet50": "torch"}] * 2
        assert {r["id"] for r in report["roles"] if r["role"] == "worker"} == {"w1/worker", "w2/worker"}
    finally:
        codes = [process.stop() for process in processes]
    assert codes == [0] * 5
    assert {r["state"] for r in status_report(configs[0], "--roles")["roles"]} == {"stopped"}
