"""The listener's receiving speed against dcmtk's storescp, and its time from last image to SR in a PACS.

Compared, same host, same disk, same files, in the same run:
- ``storescp``: dcmtk's C-STORE SCP writing each instance to a folder (no fsync, no database);
- ``mura_scp``: our SCP (pynetdicom) storing each instance as received with fsync, atomic rename,
  directory fsync and a committed SQLite (WAL, synchronous=FULL) row before the ack.
Both receive the same N instances from one dcmtk ``storescu`` association; instances/s is N over
storescu's wall time (aim: mura_scp >= 0.8x storescp).

Latency: the real service (``python -m listener``: worker process, exporter) with random-weight
members at 64 px and Orthanc as the PACS: seconds from storescu's exit (every instance acked) to
the SR and SCs stored in Orthanc, against ``stable_age_s`` + the bare scoring and heatmap time of
the same study in-process.

    python benchmarks/listener.py [--instances 100]
"""
from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from listener.paths import store_url  # noqa: E402
from listener.scp import StorageSCP  # noqa: E402
from listener.spool import Spool  # noqa: E402
from listener.store import Store  # noqa: E402
from tests.listener.orthanc import ECHOSCU, STORESCU, OrthancServer, free_port  # noqa: E402
from tests.listener.support import load, write_config  # noqa: E402


def _instances(source: Path, folder: Path, n: int) -> list[Path]:
    """``n`` copies of one radiograph, each its own instance of one study."""
    ds = pydicom.dcmread(source)
    study = generate_uid()
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(folder / f"{i:04d}.dcm")
        ds.save_as(paths[-1])
    return paths


def _push(port: int, files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run([STORESCU, "-aec", "ANY", "127.0.0.1", str(port), *map(str, files)], check=True, capture_output=True)
    return time.perf_counter() - start


def _wait_echo(port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run([ECHOSCU, "127.0.0.1", str(port)], capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no C-ECHO answer on port {port}")
        time.sleep(0.1)


def throughput(base: Path, files: list[Path]) -> dict:
    port = free_port()
    out = base / "storescp_out"
    out.mkdir()
    storescp = subprocess.Popen(["/usr/bin/storescp", "-od", str(out), str(port)])
    try:
        _wait_echo(port)
        dcmtk_s = _push(port, files)
    finally:
        storescp.terminate()
        storescp.wait()
    config = load(base / "mura_scp", min_free_disk_mb=1)
    scp = StorageSCP(config, Store(store_url(config)), Spool(config.spool_dir))
    scp.start()
    try:
        ours_s = _push(scp.port, files)
    finally:
        scp.stop()
    n = len(files)
    return {"instances": n, "instance_kb": round(files[0].stat().st_size / 1024, 1),
            "storescp_per_s": round(n / dcmtk_s, 1), "mura_scp_per_s": round(n / ours_s, 1),
            "ratio": round(dcmtk_s / ours_s, 3)}


def latency(base: Path, stable_age_s: float) -> dict:
    from mura_monai.data.synthetic import generate_mura_root
    from mura_monai.ensemble_outputs import write_study_outputs
    from mura_monai.ensemble_predictor import EnsemblePredictor
    from mura_monai.results import StudyResult
    from tests.ensemble_support import ENSEMBLE, fitted_ensemble

    generate_mura_root(base / "synth" / "mura", patients=16, seed=1, dicom_dir=base / "synth" / "dicom")
    ensemble = fitted_ensemble(base / "synth" / "mura", base / "ensemble")
    study = sorted({p.parent for p in (base / "synth" / "dicom" / "valid").rglob("*.dcm")})[0]
    files = sorted(study.glob("*.dcm"))
    predictor = EnsemblePredictor(ENSEMBLE, device="cpu", models_dir=ensemble["models"],
                                  members_models_dir=ensemble["members"])
    start = time.perf_counter()
    (result,) = predictor.predict(files)["studies"]
    write_study_outputs(predictor, StudyResult.from_json(result), base / "bare" / "heat", base / "bare" / "dicom")
    bare_s = time.perf_counter() - start
    pacs = OrthancServer(base / "orthanc").start()
    config = write_config(base / "svc", stable_age_s=stable_age_s, model_bundle=str(ENSEMBLE), model_device="cpu",
                          model_models_dir=str(ensemble["models"]), model_members_models_dir=str(ensemble["members"]),
                          destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}])
    port = int(next(line.split("=")[1] for line in config.read_text().splitlines() if line.startswith("port")))
    log = open(base / "svc" / "listener.log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "listener", "--config", str(config)], cwd=REPO, stdout=log, stderr=log)
    try:
        _wait_echo(port)
        while b"worker ready" not in (base / "svc" / "listener.log").read_bytes():  # models loaded before timing
            time.sleep(0.2)
        subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port), *map(str, files)],
                       check=True, capture_output=True)
        acked = time.perf_counter()
        ids = pacs.wait_for_instances(len(files) + 1, timeout_s=600)
        arrived = time.perf_counter() - acked
        modalities = sorted(pydicom.dcmread(io.BytesIO(pacs.instance_file(i)), stop_before_pixels=True).Modality for i in ids)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
        pacs.stop()
    return {"images": len(files), "stable_age_s": stable_age_s, "bare_score_and_outputs_s": round(bare_s, 2),
            "last_ack_to_results_in_pacs_s": round(arrived, 2),
            "overhead_s": round(arrived - stable_age_s - bare_s, 2), "arrived": modalities}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--stable-age", type=float, default=2.0)
    args = parser.parse_args()
    data_store = __import__("data_store")
    source = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        result = {
            "benchmark": "listener receiving speed and last-image-to-SR latency",
            "compared": __doc__.split("Compared, ")[1].split("\n\n")[0].replace("\n", " "),
            "source_image": source.name,
            "receive": throughput(base, _instances(source, base / "instances", args.instances)),
            "latency": latency(base, args.stable_age),
        }
    out = REPO / "benchmarks" / "results" / "listener.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
