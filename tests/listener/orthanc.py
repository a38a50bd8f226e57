"""A real Orthanc (Debian's package) as the PACS of the listener tests: own storage, free ports."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
# dcmtk's clients by full path: pynetdicom installs console scripts of the same names into the venv
STORESCU, ECHOSCU = "/usr/bin/storescu", "/usr/bin/echoscu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_orthanc() -> bool:
    return Path(ORTHANC).is_file()


class OrthancServer:
    """Start, stop and start again on the same ports and storage (a PACS going down and up)."""

    def __init__(self, folder: Path, aet: str = "ORTHANC", modalities: dict | None = None) -> None:
        """``modalities``: Orthanc's ``DicomModalities`` (name -> [AE title, host, port]), the
        peers it may push to as a modality."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port, self.http_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        config = {
            "Name": "mura-monai test PACS", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "DicomAet": aet, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": [], "HttpServerEnabled": True,
            "DicomServerEnabled": True, "StableAge": 1, "DicomModalities": modalities or {},
        }
        (self.folder / "config.json").write_text(json.dumps(config))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 60.0) -> OrthancServer:
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "config.json")], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # readiness of an external process, bounded
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {self.folder / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, body: bytes | dict, timeout_s: float = 120):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = response.read()
        return json.loads(answer) if response.headers.get_content_type() == "application/json" else answer

    def instances(self) -> list[str]:
        return self.get("/instances")

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def wait_for_instances(self, n: int, timeout_s: float) -> list[str]:
        """Poll until ``n`` instances are stored (results arrive asynchronously from the listener)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.instances()
            if len(found) >= n:
                return found
            time.sleep(0.2)
        return self.instances()

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
