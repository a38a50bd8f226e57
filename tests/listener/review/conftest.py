"""Fixtures of the review tests: the real listener with its review app, fed by dcmtk, beside Orthanc.

Once per package: Orthanc as the PACS, ``python -m listener`` with a ``[review]`` table (so the
service starts the app), two small synthetic studies pushed with storescu and analysed by the
worker process (SRs and heatmaps in Orthanc and in the spool). A snapshot of the listener's
database is taken once they are sent; tests that write labels or SRs get their own copy of it
(:func:`make_listener`), so no test sees another's labels, and the images and results are
shared read-only.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from listener.config import ListenerConfig, ReviewSettings, load_config
from tests.ensemble_support import ENSEMBLE, fitted_ensemble
from tests.listener.orthanc import ECHOSCU, STORESCU, OrthancServer, free_port, have_orthanc
from tests.listener.support import write_config

REPO = Path(__file__).resolve().parents[3]
TOKEN = "review-test-token"
REVIEWER = "dr.reviewer"


_NEEDS_PACS = {"live", "pacs", "make_listener", "review_ensemble"}


def pytest_collection_modifyitems(items):
    missing = not have_orthanc() or not Path(STORESCU).is_file()
    for item in items:
        if missing and "tests/listener/review" in str(item.fspath) and _NEEDS_PACS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.skip(reason="Debian's orthanc and dcmtk are needed"))


def model_settings(ensemble: dict) -> dict:
    return {"model_bundle": str(ENSEMBLE), "model_device": "cpu", "model_models_dir": str(ensemble["models"]),
            "model_members_models_dir": str(ensemble["members"])}


def valid_dicom_studies(mura_root: Path) -> list[list[Path]]:
    folders = sorted({p.parent for p in (mura_root.parent / "dicom" / "valid").rglob("*.dcm")})
    return [sorted(folder.glob("*.dcm")) for folder in folders]


def push(port: int, files) -> None:
    result = subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port),
                             *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.25):
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a live WAL database (SQLite's backup API, not a file copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _count(database: Path, query: str) -> int:
    db = sqlite3.connect(database)
    try:
        return db.execute(query).fetchone()[0]
    finally:
        db.close()


class LiveListener:
    """``python -m listener`` as a process; its review app on ``review_port``."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.log_path = config_path.parent / "listener.log"
        self.log = open(self.log_path, "ab")
        # one torch thread: on 2 cores shared with other work, two threads wait on each other for most
        # of each convolution (measured 15x slower with the other core busy)
        self.process = subprocess.Popen([sys.executable, "-m", "listener", "--config", str(config_path)], cwd=REPO,
                                        stdout=self.log, stderr=self.log, env={**os.environ, "OMP_NUM_THREADS": "1"})
        port = str(self.config.listener.port)
        wait_for(lambda: self.process.poll() is not None or subprocess.run(
            [ECHOSCU, "-aec", "MURA_AI", "127.0.0.1", port], capture_output=True).returncode == 0, 90, "the listener")
        assert self.process.poll() is None, self.log_path.read_text()[-2000:]

    @property
    def review_url(self) -> str:
        return f"http://127.0.0.1:{self.config.review.port}"

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        request = urllib.request.Request(self.review_url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def api_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.review_url + "/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self.log.close()
        return code


@pytest.fixture(scope="package")
def review_ensemble(synth_root, tmp_path_factory) -> dict:
    return fitted_ensemble(synth_root, tmp_path_factory.mktemp("review_ensemble"))


@pytest.fixture(scope="package")
def pacs(tmp_path_factory):
    server = OrthancServer(tmp_path_factory.mktemp("review_orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def live(review_ensemble, pacs, tmp_path_factory):
    """The listener with its review app, two pushed studies analysed and sent to Orthanc."""
    folder = tmp_path_factory.mktemp("live_listener")
    destination = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port, "retry_initial_s": 0.5,
                   "retry_max_s": 2.0}
    config_path = write_config(folder, destinations=[destination], review={"port": free_port(), "token": TOKEN},
                               **model_settings(review_ensemble))
    listener = LiveListener(config_path)
    studies = sorted(valid_dicom_studies(review_ensemble["root"]), key=len)[:4]  # the smallest: heatmaps cost
    try:
        for files in studies:
            push(listener.config.listener.port, files)
        n_sent = sum(len(files) for files in studies) + len(studies)  # a heatmap SC per image, an SR per study
        wait_for(lambda: len(pacs.instances()) >= n_sent, 300, "the results in Orthanc", poll_s=0.5)
        database = listener.config.spool_dir / "queue.sqlite3"
        wait_for(lambda: _count(database, "SELECT COUNT(*) FROM studies WHERE state='sent'") == len(studies), 30,
                 "the studies marked sent")
        wait_for(listener.api_ready, 60, "the review app")
        copy_database(listener.config.spool_dir / "queue.sqlite3", folder / "pristine.sqlite3")
        listener.pushed, listener.root = studies, review_ensemble["root"]
        listener.pristine = folder / "pristine.sqlite3"
        yield listener
    finally:
        assert listener.stop() == 0
    assert not listener.api_ready()  # the review app stopped with the listener


@pytest.fixture
def make_listener(live, tmp_path):
    """A listener config of this test's own over a copy of the live listener's first database."""

    def make(review: dict | None = None, destinations=None, folder: Path | None = None) -> ListenerConfig:
        folder = folder or tmp_path / "svc"
        copy_database(live.pristine, folder / "spool" / "queue.sqlite3")
        settings = {k: getattr(live.config.model, k[len("model_"):]) for k in
                    ("model_bundle", "model_device", "model_models_dir", "model_members_models_dir")}
        default = [{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}]
        return load_config(write_config(folder, destinations=default if destinations is None else destinations,
                                        review=review, **settings))

    return make


class ServedApp:
    """The real app behind uvicorn in a thread of the test process, on a free port of 127.0.0.1."""

    def __init__(self, config: ListenerConfig, settings: ReviewSettings | None = None, middleware=(),
                 port: int | None = None) -> None:
        """``middleware``: Starlette ``(class, options)`` pairs put around the app (outermost last);
        ``port``: a port chosen beforehand (a sign-on provider must know the callback's address)."""
        from listener.review.server import make_server

        self.config = config
        self.settings = replace(settings or config.review or ReviewSettings(), port=port or free_port())
        self.server = make_server(config, self.settings)
        for cls, options in middleware:
            self.server.config.app.add_middleware(cls, **options)
        self.thread = threading.Thread(target=self.server.run, name="review-app", daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 30, "the review app", poll_s=0.05)
        assert self.server.started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serve():
    """``serve(config, settings=None, middleware=(), port=None)`` starts the app; every app started
    is stopped after the test."""
    started: list[ServedApp] = []

    def start(config: ListenerConfig, settings: ReviewSettings | None = None, middleware=(),
              port: int | None = None) -> ServedApp:
        started.append(ServedApp(config, settings, middleware, port))
        return started[-1]

    yield start
    for app in started:
        app.stop()
