"""Step 6 of the demo: the design card's story with real parts.

Orthanc (Debian's package) plays the hospital PACS, `mura-listener` runs with the demo ensemble,
dcmtk's `storescu` pushes one synthetic DICOM study as a modality would, and we wait until the SR
and the heatmap secondary captures have landed in Orthanc, then print where they are. The
review web app runs beside the listener (``[review]``); we read the study's worklist row from it.

    python scripts/demo_listener.py DEMO_DIR MODELS_DIR DICOM_STUDY_DIR
"""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.listener.orthanc import ECHOSCU, STORESCU, OrthancServer, free_port  # noqa: E402  (the tests' PACS helper)


def main(demo_dir: Path, models: Path, study: Path) -> int:
    base = demo_dir / "listener"
    pacs = OrthancServer(base / "orthanc").start()
    port, review_port = free_port(), free_port()
    config = base / "listener.toml"
    config.write_text(f"""[listener]
ae_title = "MURA_AI"
host = "127.0.0.1"
port = {port}
spool_dir = "spool"
stable_age_s = 3
log_format = "text"

[model]
bundle = "{REPO / 'bundles' / 'ensemble'}"
device = "auto"
models_dir = "{models / 'ensemble'}"
members_models_dir = "{models}"

[review]
host = "127.0.0.1"
port = {review_port}

[[destinations]]
ae_title = "{pacs.aet}"
host = "127.0.0.1"
port = {pacs.dicom_port}
""")
    log = open(base / "listener.log", "wb")
    listener = subprocess.Popen(["mura-listener", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ECHOSCU, "-aec", "MURA_AI", "127.0.0.1", str(port)], capture_output=True).returncode:
            if listener.poll() is not None or time.monotonic() > deadline:
                print((base / "listener.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.3)
        files = sorted(study.glob("*.dcm"))
        print(f"   storescu: pushing {len(files)} images of one study to MURA_AI@127.0.0.1:{port}")
        sent = subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port),
                               *map(str, files)], capture_output=True, text=True)
        if sent.returncode:
            print(f"   storescu failed:\n{sent.stderr}{sent.stdout}", file=sys.stderr)
            return 1
        start = time.monotonic()
        ids = pacs.wait_for_instances(len(files) + 1, timeout_s=300)
        if len(ids) < len(files) + 1:
            print((base / "listener.log").read_text()[-3000:], file=sys.stderr)
            return 1
        print(f"   results in the PACS {time.monotonic() - start:.1f} s after the last image was acknowledged")
        for instance in ids:
            ds = pydicom.dcmread(io.BytesIO(pacs.instance_file(instance)), stop_before_pixels=True)
            print(f"   in Orthanc, instance {instance}: {ds.Modality} {ds.SeriesDescription}")
        rows = _worklist(review_port, deadline=time.monotonic() + 60)
        for row in rows:
            print(f"   review worklist (http://127.0.0.1:{review_port}/): accession {row['accession_number']}, "
                  f"{row['body_part']}, {row['finding']} at {row['probability']:.2f}, {row['review']}")
        status = subprocess.run(["mura-listener", "status", "--config", str(config)], capture_output=True, text=True)
        print("   mura-listener status:\n" + "\n".join("      " + line for line in status.stdout.splitlines()))
        (base / "orthanc_instances.json").write_text(json.dumps(ids))
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(timeout=120)
        pacs.stop()
    print(f"   listener log {base / 'listener.log'}; spool {base / 'spool'}")
    print(f"   review it in a browser: mura-review --config {config} then http://127.0.0.1:{review_port}/")
    print(f"   browse the PACS again: /usr/sbin/Orthanc {base / 'orthanc' / 'config.json'} "
          f"then {pacs.url}/app/explorer.html (IDs in {base / 'orthanc_instances.json'})")
    return 0


def _worklist(port: int, deadline: float) -> list[dict]:
    """The review app's analysed worklist rows, once the app answers (it starts beside the listener)."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/datastore/studies", timeout=5) as response:
                rows = [r for r in json.load(response)["studies"] if r["analysed"]]
            if rows or time.monotonic() > deadline:
                return rows
        except OSError:
            if time.monotonic() > deadline:
                return []
        time.sleep(0.3)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()))
