"""Scaling out: studies/s and last-instance-to-SR latency for 1, 2 and 4 workers on PostgreSQL,
against the embedded default (SQLite, one worker) on the same host and inputs.

Compared, same host, same studies, same model (the test suite's two-member ensemble at 64 px), in
one run:
- ``sqlite_default``: ``mura-listener --config`` as shipped: SQLite in the spool, one worker process;
- ``postgresql_N_workers``: one ``--role scp``, one ``--role exporter`` and N ``--role worker``
  processes on one PostgreSQL database (N = 1, 2, 4);
- ``batching``: one PostgreSQL worker with ``batch_studies = 1`` against ``batch_studies = 8``.
Each run pushes every study with 4 concurrent dcmtk ``storescu`` processes and waits until every
study's SR and heatmaps are acknowledged by Orthanc. studies/s: the studies over the time from the
first push to the last study sent. Latency per study: from its storescu's exit (every instance
acknowledged) to the store marking it sent (every destination acknowledged); p50 and p95.

    python benchmarks/scale.py [--studies 24] [--postgres postgresql://root@127.0.0.1:5432/test]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from listener.store import Store  # noqa: E402
from tests.listener.orthanc import ECHOSCU, STORESCU, OrthancServer  # noqa: E402
from tests.listener.support import write_config  # noqa: E402


def _studies(base: Path, n: int) -> list[list[Path]]:
    """``n`` studies: the synthetic root's DICOM studies in turn, each copy with new UIDs."""
    from pydicom.uid import generate_uid

    from mura_monai.data.synthetic import generate_mura_root

    generate_mura_root(base / "synth" / "mura", patients=16, seed=1, dicom_dir=base / "synth" / "dicom")
    sources = [sorted(folder.glob("*.dcm")) for folder in sorted({p.parent for p in (base / "synth" / "dicom").rglob("*.dcm")})]
    studies = []
    for k in range(n):
        folder = base / "studies" / f"{k:03d}"
        folder.mkdir(parents=True)
        study_uid, files = generate_uid(), []
        for source in sources[k % len(sources)]:
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            files.append(folder / f"{len(files):02d}.dcm")
            ds.save_as(files[-1])
        studies.append(files)
    return studies


def _wait_echo(port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run([ECHOSCU, "-aec", "MURA_AI", "127.0.0.1", str(port)], capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no C-ECHO answer on port {port}")
        time.sleep(0.1)


def _push_all(port: int, studies: list[list[Path]], parallel: int = 4) -> dict[str, float]:
    """Every study pushed by ``parallel`` storescu processes at a time; StudyInstanceUID -> acked time."""
    acked: dict[str, float] = {}
    queue = list(studies)
    lock = threading.Lock()

    def pusher() -> None:
        while True:
            with lock:
                if not queue:
                    return
                files = queue.pop(0)
            subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port),
                            *map(str, files)], check=True, capture_output=True)
            uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
            with lock:
                acked[uid] = time.time()

    threads = [threading.Thread(target=pusher) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acked


def _sent_times(url: str) -> dict[str, float]:
    store = Store(url)
    try:
        rows = store.connection().execute("SELECT study_uid, updated_at FROM studies WHERE state = 'sent'").fetchall()
        return {row[0]: float(row[1]) for row in rows}
    finally:
        store.close()


def _run(base: Path, name: str, studies, settings: dict, store: str | None, workers: int, pacs) -> dict:
    folder = base / name
    config = write_config(folder, stable_age_s=1.0, destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1",
                                                                     "port": pacs.dicom_port}], **settings)
    if store:
        config.write_text(config.read_text() + f'\n[store]\nurl = "{store}"\nlease_s = 30.0\n')
    port = int(next(line.split("=")[1] for line in config.read_text().splitlines() if line.startswith("port")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = ([["serve", "--role", "scp"], ["serve", "--role", "exporter"]] +
                [["serve", "--role", "worker", "--worker-id", f"w{k}"] for k in range(workers)]) if store else [["serve"]]
    processes, logs = [], []
    for k, command in enumerate(commands):
        logs.append(folder / f"role{k}.log")
        processes.append(subprocess.Popen([sys.executable, "-m", "listener", *command, "--config", str(config)], cwd=REPO,
                                          stdout=open(logs[-1], "wb"), stderr=subprocess.STDOUT, env=env))
    url = store or str(folder / "spool" / "queue.sqlite3")
    try:
        _wait_echo(port)
        deadline = time.monotonic() + 300
        while sum(log.read_bytes().count(b"worker ready") for log in logs) < workers:  # models loaded before timing
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"{name}: the workers did not start; see {folder}")
            time.sleep(0.2)
        start = time.time()
        acked = _push_all(port, studies)
        while len(sent := _sent_times(url)) < len(studies):
            if time.time() - start > 1800:
                raise TimeoutError(f"{name}: {len(sent)} of {len(studies)} studies sent after 30 minutes")
            time.sleep(0.2)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=180)
    latencies = np.array([sent[uid] - acked[uid] for uid in acked])
    return {"workers": workers, "store": "postgresql" if store else "sqlite", "studies": len(studies),
            "images": sum(len(s) for s in studies), "seconds": round(max(sent.values()) - start, 2),
            "studies_per_s": round(len(studies) / (max(sent.values()) - start), 3),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 2),
            "latency_p95_s": round(float(np.percentile(latencies, 95)), 2), **settings}


def _schema(admin_url: str) -> tuple[str, str]:
    import psycopg

    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in admin_url else "?"
    return schema, f"{admin_url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def _drop(admin_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--postgres", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    from tests.ensemble_support import ENSEMBLE, fitted_ensemble

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        studies = _studies(base, args.studies)
        ensemble = fitted_ensemble(base / "synth" / "mura", base / "ensemble")
        model = {"model_bundle": str(ENSEMBLE), "model_device": "cpu", "model_models_dir": str(ensemble["models"]),
                 "model_members_models_dir": str(ensemble["members"])}
        pacs = OrthancServer(base / "orthanc").start()
        runs = []
        try:
            runs.append(_run(base, "sqlite_default", studies, model, None, 1, pacs))
            for n in map(int, args.workers.split(",")):
                schema, url = _schema(args.postgres)
                try:
                    runs.append(_run(base, f"postgresql_{n}_workers", studies, {**model, "model_batch_studies": 1},
                                     url, n, pacs))
                finally:
                    _drop(args.postgres, schema)
            schema, url = _schema(args.postgres)
            try:
                runs.append(_run(base, "postgresql_1_worker_batch8", studies, {**model, "model_batch_studies": 8},
                                 url, 1, pacs))
            finally:
                _drop(args.postgres, schema)
        finally:
            pacs.stop()
    one = next(r for r in runs if r["store"] == "postgresql" and r["workers"] == 1 and r["model_batch_studies"] == 1)
    batched = runs[-1]
    result = {
        "benchmark": "scaling out: workers on one PostgreSQL queue against the SQLite default",
        "compared": __doc__.split("Compared, ")[1].split("\n\n")[0].replace("\n", " "),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": runs,
        "speedup_vs_1_worker": {f"{r['workers']}_workers": round(r["studies_per_s"] / one["studies_per_s"], 2)
                                for r in runs if r["store"] == "postgresql" and r["model_batch_studies"] == 1},
        "batching_gain_1_worker": round(batched["studies_per_s"] / one["studies_per_s"], 2),
    }
    out = REPO / "benchmarks" / "results" / "scale.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
