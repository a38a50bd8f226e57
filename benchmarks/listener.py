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

Full size: a 3-image CR study made of pydicom-data's real radiographs (RG1 uncompressed and JPEG
2000, RG3 JPEG 2000; 1955x1841 and 1760x1760) through the members at their bundles' own input sizes
(DenseNet-169 at 320, ResNet-50 at 224), random weights, exported and validated:
- ``bare_forward_s``: both members' eager no-grad forward on the study's prepared images (batch 3);
- ``analysis_s``: the worker's analysis in-process (decode, score, heatmaps, SR and SCs) ``before``
  (eager PyTorch, every image decoded again for its heatmap, heatmaps for every study: the pipeline
  of issue 21) and ``after`` (the default backend, one decode, heatmaps for all and for flagged
  studies only, this study being called normal);
- ``last_ack_to_sr_in_pacs_s``: the real service and Orthanc, from storescu's exit to the SR in the
  PACS (``to_sr_s``; the SR is sent before the heatmaps are drawn) and to the last heatmap capture
  (``to_all_s``), against the goal ``stable_age_s + 1.5 x bare_forward_s``; with heatmaps for
  every study, for flagged studies only, and the latter with no instance scored ahead
  (``prescore_images = 0``: each image decoded and scored only once the study is complete).

    python benchmarks/listener.py [--instances 100] [--parts receive,latency,full_size]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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
    service = _service_latency(base, files, ensemble, stable_age_s, {})
    return {"images": len(files), "stable_age_s": stable_age_s, "bare_score_and_outputs_s": round(bare_s, 2),
            "last_ack_to_sr_in_pacs_s": service["to_sr_s"], "last_ack_to_results_in_pacs_s": service["to_all_s"],
            "overhead_s": round(service["to_all_s"] - stable_age_s - bare_s, 2), "arrived": service["arrived"]}


FULL_SIZE_FILES = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KR.dcm")


def _full_size_study(source_dir: Path, folder: Path) -> list[Path]:
    """pydicom-data's three CR radiographs as one study of one patient, as a CR modality sends them."""
    folder.mkdir(parents=True)
    study, paths = generate_uid(), []
    first = pydicom.dcmread(source_dir / FULL_SIZE_FILES[0], stop_before_pixels=True)
    for i, name in enumerate(FULL_SIZE_FILES):
        ds = pydicom.dcmread(source_dir / name)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate"):
            if keyword in first:
                setattr(ds, keyword, first.data_element(keyword).value)
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        ds.SeriesInstanceUID, ds.InstanceNumber = generate_uid(), i + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(folder / f"{i:02d}.dcm")
        ds.save_as(paths[-1])
    return paths


def _full_size_ensemble(base: Path) -> dict:
    """The two demo members at their own input sizes, exported, and a fitted ensemble whose
    thresholds call the random-weight members' study normal and certain (so that ``uncertain``
    draws no heatmap)."""
    from benchmarks.inference import _write_members
    from mura_monai.ensemble import fit_ensemble_parameters
    from mura_monai.export import export_bundle

    members = _write_members(base, 0)
    for name in ("densenet169_wbce", "resnet50"):
        export_bundle(REPO / "bundles" / name, members / name)
    rng = np.random.default_rng(0)
    fitted = fit_ensemble_parameters(rng.random((60, 2)), np.repeat([0, 1], 30), [f"s{i}" for i in range(60)],
                                     ["XR_WRIST"] * 60, ["densenet169_wbce", "resnet50"])
    for part in fitted.thresholds.values():
        for point in part:
            part[point] = 1.0  # nothing is above: normal
    fitted.save(base / "models" / "ensemble.json")
    return {"members": members, "models": base / "models"}


def _analysis(predictor, files: list[Path], out: Path, one_decode: bool, heatmap_studies: str) -> float:
    """The worker's analysis of one study in-process: score, then heatmaps, SR and SCs."""
    from mura_monai.ensemble_outputs import write_study_outputs

    start = time.perf_counter()
    decoded: dict | None = {} if one_decode else None
    records, P = predictor.member_probabilities(files, keep=decoded)
    (result,) = predictor.studies(records, P)
    write_study_outputs(predictor, result, None, out, decoded=decoded, heatmap_studies=heatmap_studies)
    return time.perf_counter() - start


def full_size(base: Path, source_dir: Path, stable_age_s: float) -> dict:
    import torch

    from mura_monai.ensemble_predictor import EnsemblePredictor
    from tests.ensemble_support import ENSEMBLE

    files = _full_size_study(source_dir, base / "full" / "study")
    ensemble = _full_size_ensemble(base / "full" / "ensemble")

    def predictor(backend):
        return EnsemblePredictor(ENSEMBLE, device="cpu", models_dir=ensemble["models"],
                                 members_models_dir=ensemble["members"], backend=backend)

    eager, default = predictor("torch"), predictor(None)
    prepared = [torch.stack([m.prepare(eager.members[0].load(f)) for f in files]) for m in eager.members]

    def bare() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for member, x in zip(eager.members, prepared):
                member.loaded.network(x)
        return time.perf_counter() - start

    bare()  # warm-up
    bare_s = min(bare() for _ in range(3))
    runs = {"before": (eager, False, "all"), "after_all": (default, True, "all"), "after_uncertain": (default, True, "uncertain")}
    analysis = {}
    for label, (chosen, one_decode, policy) in runs.items():
        _analysis(chosen, files, base / "full" / f"warm_{label}", one_decode, policy)  # warm-up
        analysis[label] = round(min(_analysis(chosen, files, base / "full" / f"{label}{k}", one_decode, policy)
                                    for k in range(2)), 2)
    warm = _full_size_study(source_dir, base / "full" / "warm_study")
    runs = {"all": {"heatmap_studies": "all"}, "uncertain": {"heatmap_studies": "uncertain"},
            "uncertain_not_scored_ahead": {"heatmap_studies": "uncertain", "prescore_images": 0}}
    service = {label: _service_latency(base / "full" / f"svc_{label}", files, ensemble, stable_age_s, model, warm)
               for label, model in runs.items()}
    headers = {f: pydicom.dcmread(source_dir / f, stop_before_pixels=True) for f in FULL_SIZE_FILES}
    return {"images": [f"{f} ({ds.Rows}x{ds.Columns})" for f, ds in headers.items()],
            "input_sizes": {n: m.input_size for n, m in zip(eager.member_names, eager.members)},
            "backends_after": [m.backend.name for m in default.members],
            "bare_forward_s": round(bare_s, 3), "analysis_s": analysis,
            "stable_age_s": stable_age_s, "goal_s": round(stable_age_s + 1.5 * bare_s, 2),
            "last_ack_to_sr_in_pacs_s": service}


def _service_latency(base: Path, files: list[Path], ensemble: dict, stable_age_s: float, model: dict,
                     warm_files: list[Path] = ()) -> dict:
    """The real service and Orthanc: seconds from storescu's exit to the SR (and everything) in the PACS.
    ``warm_files``: a study sent and awaited first, so that the timed one finds the worker as a
    running service has it (libraries loaded, first passes done) rather than just started."""
    from tests.ensemble_support import ENSEMBLE

    pacs = OrthancServer(base / "orthanc").start()
    config = write_config(base / "svc", stable_age_s=stable_age_s, model_bundle=str(ENSEMBLE), model_device="cpu",
                          model_models_dir=str(ensemble["models"]), model_members_models_dir=str(ensemble["members"]),
                          **{f"model_{k}": v for k, v in model.items()},
                          destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}])
    port = int(next(line.split("=")[1] for line in config.read_text().splitlines() if line.startswith("port")))
    log_path = base / "svc" / "listener.log"
    log = open(log_path, "wb")
    service = subprocess.Popen([sys.executable, "-m", "listener", "--config", str(config)], cwd=REPO, stdout=log, stderr=log)
    try:
        _wait_echo(port)
        while b"worker ready" not in log_path.read_bytes():  # models loaded before timing
            time.sleep(0.2)
        per_study = 1 + (len(files) if model.get("heatmap_studies", "all") == "all" else 0)
        warm_ids: list[str] = []
        if warm_files:
            subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port),
                            *map(str, warm_files)], check=True, capture_output=True)
            warm_ids = pacs.wait_for_instances(per_study, timeout_s=600)
        subprocess.run([STORESCU, "-xv", "-aet", "MODALITY", "-aec", "MURA_AI", "127.0.0.1", str(port), *map(str, files)],
                       check=True, capture_output=True)
        acked = time.perf_counter()
        arrivals: dict[str, float] = {}  # when each result was first seen in Orthanc (polled every 20 ms)
        while len(arrivals) < per_study and time.perf_counter() - acked < 600:
            for i in pacs.instances():
                if i not in warm_ids:
                    arrivals.setdefault(i, time.perf_counter() - acked)
            time.sleep(0.02)
        modality = {i: pydicom.dcmread(io.BytesIO(pacs.instance_file(i)), stop_before_pixels=True).Modality
                    for i in arrivals}
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
        pacs.stop()
    return {"heatmap_studies": model.get("heatmap_studies", "all"),
            "prescore_images": model.get("prescore_images", 32),
            "to_sr_s": round(min(t for i, t in arrivals.items() if modality[i] == "SR"), 2),
            "to_all_s": round(max(arrivals.values()), 2),
            "after_a_first_study": bool(warm_files), "arrived": sorted(modality.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--stable-age", type=float, default=2.0)
    parser.add_argument("--parts", default="receive,latency,full_size",
                        help="which figures to measure; the others are kept from the last results file")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - {"receive", "latency", "full_size"})
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: receive, latency, full_size")
    out = REPO / "benchmarks" / "results" / "listener.json"
    data_store = __import__("data_store")
    source = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        result = json.loads(out.read_text()) if out.is_file() and len(parts) < 3 else {}
        result.update({
            "benchmark": "listener receiving speed and last-image-to-SR latency",
            "compared": __doc__.split("Compared, ")[1].split("\n\n")[0].replace("\n", " "),
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "source_image": source.name,
        })
        if "receive" in parts:
            result["receive"] = throughput(base, _instances(source, base / "instances", args.instances))
        if "latency" in parts:
            result["latency"] = latency(base, args.stable_age)
        if "full_size" in parts:
            result["full_size"] = full_size(base, source.parent, args.stable_age)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
