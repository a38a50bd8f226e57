"""Studies per second of one listener worker taking waiting studies one at a time or together.

Compared, same process, same models, same 16 small synthetic DICOM studies, in the same run:
``[model] batch_studies = 1`` (each study claimed, scored and written alone) against
``batch_studies = 8`` (up to 8 waiting studies claimed at once and their images scored in shared
batches of ``batch_images = 16``), both with the rest of the worker as the service runs it
(heatmaps, SR and secondary captures written, results finished in an SQLite store). The
ensemble is the one the listener benchmark uses: densenet169_wbce and resnet50 at 64 px,
random weights, really fitted. Each setting runs ``--repeats`` times, alternating, on a fresh
spool; the best run counts. ``scoring_s`` is the part spent decoding and in the members' forward
passes (what batching shares); the rest (decoding again for the heatmaps, Grad-CAM per image and
member, DICOM writing, the store) is per study whatever the batch. Run on a CPU-only machine
(2 cores shared with other work, torch on 2 threads); a GPU, where a batch of 16 costs about
what one image does, is not measured here.

    python benchmarks/batching.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from listener.spool import Spool  # noqa: E402
from listener.store import Store  # noqa: E402
from listener.worker import Worker  # noqa: E402
from tests.listener.support import load  # noqa: E402

STUDIES = 16


class _Timed:
    """The predictor, with the time its forward passes take added up."""

    def __init__(self, predictor) -> None:
        self.predictor, self.scoring_s = predictor, 0.0

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def member_probabilities(self, paths, **kwargs):
        start = time.perf_counter()
        try:
            return self.predictor.member_probabilities(paths, **kwargs)
        finally:
            self.scoring_s += time.perf_counter() - start


def _run(base: Path, ensemble: dict, predictor, studies: list[list[Path]], batch_studies: int) -> dict:
    from tests.ensemble_support import ENSEMBLE

    if base.exists():
        shutil.rmtree(base)
    config = load(base, model_bundle=str(ENSEMBLE), model_device="cpu", model_models_dir=str(ensemble["models"]),
                  model_members_models_dir=str(ensemble["members"]), model_batch_studies=batch_studies,
                  destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}])
    store, spool = Store(config.spool_dir / "queue.sqlite3"), Spool(config.spool_dir)
    for i, files in enumerate(studies):
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            final = spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, final)
            store.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, "MODALITY", ds.SOPClassUID, final, now=i)
    store.promote_stable(0, now=len(studies))
    timed = _Timed(predictor)
    worker = Worker(config, store, predictor=timed)
    batches = []
    start = time.perf_counter()
    while n := worker.run_once():
        batches.append(n)
    seconds = time.perf_counter() - start
    analysed = sum(s.state == "analysed" for s in store.studies())
    store.close()
    return {"batch_studies": batch_studies, "batches": batches, "analysed": analysed, "seconds": round(seconds, 2),
            "studies_per_s": round(len(studies) / seconds, 3), "scoring_s": round(timed.scoring_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from mura_monai.data.synthetic import generate_mura_root
    from mura_monai.ensemble_predictor import EnsemblePredictor
    from tests.ensemble_support import ENSEMBLE, fitted_ensemble

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        generate_mura_root(base / "synth" / "mura", patients=16, seed=1, dicom_dir=base / "synth" / "dicom")
        ensemble = fitted_ensemble(base / "synth" / "mura", base / "ensemble")
        folders = sorted({p.parent for p in (base / "synth" / "dicom").rglob("*.dcm")})[:STUDIES]
        studies = [sorted(folder.glob("*.dcm")) for folder in folders]
        predictor = EnsemblePredictor(ENSEMBLE, device="cpu", models_dir=ensemble["models"],
                                      members_models_dir=ensemble["members"])
        predictor.member_probabilities(studies[0])  # first-call costs (allocations, lazy imports) out of the timing
        runs: dict[int, list[dict]] = {1: [], 8: []}
        for _ in range(args.repeats):
            for batch_studies in runs:
                runs[batch_studies].append(_run(base / "run", ensemble, predictor, studies, batch_studies))
        best = {n: min(r, key=lambda r: r["seconds"]) for n, r in runs.items()}
        result = {
            "benchmark": "one listener worker: studies/s with batch_studies=1 against 8",
            "compared": __doc__.split("Compared, ")[1].split("\n\n")[0].replace("\n", " "),
            "machine": {"note": "CPU only, 2 cores shared with other work; no GPU", "cpu_cores": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "device": "cpu",
                        "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
            "studies": len(studies), "images": sum(map(len, studies)), "batch_images": 16,
            "one_at_a_time": best[1], "batched": best[8],
            "speedup": round(best[1]["seconds"] / best[8]["seconds"], 3),
            "scoring_speedup": round(best[1]["scoring_s"] / best[8]["scoring_s"], 3),
            "runs": runs,
        }
    out = REPO / "benchmarks" / "results" / "batching.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
