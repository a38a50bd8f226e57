"""Listener configs and DICOM inputs for the listener tests."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from listener.config import load_config
from tests.listener.orthanc import ECHOSCU, free_port

REPO = Path(__file__).resolve().parents[2]


def write_config(folder: Path, port: int | None = None, destinations=(), review: dict | None = None,
                 **listener) -> Path:
    """A listener.toml in ``folder`` (spool beside it), ``[listener]`` values overridable;
    ``review``: the ``[review]`` table, when given."""
    settings = {"ae_title": "MURA_AI", "host": "127.0.0.1", "port": port or free_port(), "spool_dir": "spool",
                "stable_age_s": 1.0, "min_free_disk_mb": 1, "log_format": "json", **listener}

    def value(v):
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = ["[listener]"] + [f"{k} = {value(v)}" for k, v in settings.items() if not k.startswith("model_")]
    model = {k[len("model_"):]: v for k, v in settings.items() if k.startswith("model_")}
    if model:
        lines += ["", "[model]"] + [f"{k} = {value(v)}" for k, v in model.items()]
    for d in destinations:
        lines += ["", "[[destinations]]"] + [f"{k} = {value(v)}" for k, v in d.items()]
    if review is not None:
        lines += ["", "[review]"] + [f"{k} = {value(v)}" for k, v in review.items() if not isinstance(v, dict)]
        for table, values in ((k, v) for k, v in review.items() if isinstance(v, dict)):  # [review.oidc]
            lines += ["", f"[review.{table}]"] + [f"{k} = {value(v)}" for k, v in values.items()]
    path = Path(folder) / "listener.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def load(folder: Path, **kwargs):
    return load_config(write_config(folder, **kwargs))


def status_report(config: Path, *args: str) -> dict:
    """``mura-listener status --json``: ``{"roles": [...], "queue": {...}, "studies": [...]}``."""
    out = subprocess.run([sys.executable, "-m", "listener", "status", "--config", str(config), "--json", *args],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class Listener:
    """`python -m listener` as its own process, ready once dcmtk's echoscu gets an answer; with
    ``args`` (``serve --role worker ...``) a role without a DICOM port, ready once started."""

    def __init__(self, config: Path, *args: str, log: str = "listener.log") -> None:
        self.config = config
        self.log_path = config.parent / log
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "listener", *args, "--config", str(config)], cwd=REPO,
                                        stdout=self.log, stderr=self.log)
        port = int(next(line.split("=")[1] for line in config.read_text().splitlines() if line.startswith("port")))
        self.port = port
        if "--role" in args and args[args.index("--role") + 1] not in ("scp", "all"):
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # readiness of another process: C-ECHO answers
            if subprocess.run([ECHOSCU, "-aec", "MURA_AI", "127.0.0.1", str(port)], capture_output=True).returncode == 0:
                return
            assert self.process.poll() is None, self.log_path.read_text()[-2000:]
            time.sleep(0.2)
        raise TimeoutError("listener did not start")

    def status(self) -> list[dict]:
        """The studies of ``status --json``."""
        return status_report(self.config)["studies"]

    def stop(self, sig=signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=120)


def receive_files(store, spool, files: list[Path], now: float, stable: bool = True) -> str:
    """Instance files put in the spool and recorded as the SCP would, their study then stable
    (unless ``stable`` is false: still receiving); returns the study's key (what a worker's claim
    names)."""
    import shutil

    import pydicom

    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        final = spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, final)
        key = store.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, "MODALITY", ds.SOPClassUID, final, now=now)
    if stable:
        store.promote_stable(1, now=now + 5)
    return key
