"""Step 6 of the demo: the design card's story with real parts.

Orthanc (Debian's package) plays the hospital PACS, `mura-listener` runs with the demo ensemble,
dcmtk's `storescu` pushes one synthetic DICOM study as a modality would, and we wait until the SR
and the heatmap secondary captures have landed in Orthanc, then print where they are.

    python scripts/demo_listener.py DEMO_DIR MODELS_DIR DICOM_STUDY_DIR
"""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.listener.orthanc import ECHOSCU, STORESCU, OrthancServer, free_port  # noqa: E402  (the tests' PACS helper)


def main(demo_dir: Path, models: Path, study: Path) -> int:
    base = demo_dir / "listener"
    pacs = OrthancServer(base / "orthanc").start()
    port = free_port()
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
        status = subprocess.run(["mura-listener", "status", "--config", str(config)], capture_output=True, text=True)
        print("   mura-listener status:\n" + "\n".join("      " + line for line in status.stdout.splitlines()))
        (base / "orthanc_instances.json").write_text(json.dumps(ids))
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(timeout=120)
        pacs.stop()
    print(f"   listener log {base / 'listener.log'}; spool {base / 'spool'}")
    print(f"   browse the PACS again: /usr/sbin/Orthanc {base / 'orthanc' / 'config.json'} "
          f"then {pacs.url}/app/explorer.html (IDs in {base / 'orthanc_instances.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()))
