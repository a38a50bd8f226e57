"""Ensemble inference throughput against a bare torch forward, and the cost of each CAM method.

Compared, on the same networks and the same batches:
- ``bare``: ``torch.no_grad(); network(x)`` per member, nothing else (the ceiling);
- ``ensemble_tensors``: the ensemble's scoring path from prepared tensors (each member's
  ``BundlePredictor.forward``: autocast on CUDA, sigmoid, copies back to the host) plus the fitted
  combination: the pipeline's overhead on the network work (issue target: >= 0.7x bare);
- ``ensemble_files``: ``EnsemblePredictor.predict`` from PNG files, decoding and preprocessing
  included (what the listener pays per study).
CAMs: seconds per image for Grad-CAM (batched), Grad-CAM++ and SmoothGrad (batch 1, MONAI's limit)
on each member.

Members are the demo's (densenet169_wbce, resnet50) with random weights: throughput does not depend
on what the weights learned. Writes ``benchmarks/results/inference[_cuda].json``.

    python benchmarks/inference.py [--device auto] [--image-size 128] [--images 48] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mura_monai.engines import resolve_device  # noqa: E402
from mura_monai.ensemble import fit_ensemble_parameters  # noqa: E402
from mura_monai.ensemble_predictor import EnsemblePredictor  # noqa: E402
from mura_monai.explain import compute_cam  # noqa: E402
from mura_monai.model_settings import save_model_settings  # noqa: E402

MEMBERS = {"densenet169_wbce": {}, "resnet50": {}}


def _write_members(base: Path, image_size: int) -> Path:
    members = base / "members"
    for name, extra in MEMBERS.items():
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / name / "configs" / "inference.json"))
        parser["bundle_root"] = str(REPO / "bundles" / name)
        for key, value in {"image_size": image_size, **extra}.items():
            parser[key] = value
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def")
        (members / name).mkdir(parents=True)
        torch.save(network.state_dict(), members / name / "model.pt")
        save_model_settings(members / name, image_size=image_size, **extra)
    return members


def _write_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        study = folder / "XR_WRIST" / f"patient{i // 3:05d}" / "study1_negative"
        study.mkdir(parents=True, exist_ok=True)
        path = study / f"image{i % 3 + 1}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (512, 400), dtype=np.uint8))
        paths.append(path)
    return paths


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: cudnn autotuning, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cam-images", type=int, default=2)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        members_dir = _write_members(base, args.image_size)
        paths = _write_images(base / "images", args.images)
        predictor = EnsemblePredictor(REPO / "bundles" / "ensemble", device=str(device), members_models_dir=members_dir,
                                      models_dir=base / "models", fitted=False,
                                      overrides={"batch_size": args.batch_size})
        rng = np.random.default_rng(0)
        P = rng.random((60, len(MEMBERS)))
        labels = np.repeat([0, 1], 30)
        predictor.fitted = fit_ensemble_parameters(P, labels, [f"s{i}" for i in range(60)], ["XR_WRIST"] * 60,
                                                   predictor.member_names)
        loaded = [predictor.members[0].load(p) for p in paths]
        prepared = [[m.prepare(item) for item in loaded] for m in predictor.members]
        batches = [[member[i:i + args.batch_size] for i in range(0, len(paths), args.batch_size)] for member in prepared]
        stacked = [[torch.stack(b).to(device) for b in member] for member in batches]

        def bare() -> None:
            with torch.no_grad():
                for member, member_batches in zip(predictor.members, stacked):
                    for x in member_batches:
                        member.loaded.network(x)

        def ensemble_tensors() -> None:
            columns = [sum((m.forward(b) for b in member_batches), []) for m, member_batches in zip(predictor.members, batches)]
            predictor.fitted(np.asarray(columns).T)

        def ensemble_files() -> None:
            predictor.predict(paths)

        seconds = {
            "bare": _timed(bare, device, args.repeats),
            "ensemble_tensors": _timed(ensemble_tensors, device, args.repeats),
            "ensemble_files": _timed(ensemble_files, device, max(1, args.repeats - 1)),
        }
        throughput = {k: args.images / v for k, v in seconds.items()}

        cams = {}
        for member, name in zip(predictor.members, predictor.member_names):
            x = torch.stack(prepared[predictor.members.index(member)][: args.cam_images]).to(device)
            cams[name] = {
                method: _timed(partial(compute_cam, member.loaded.network, x, method=method), device, 1) / len(x)
                for method in ("gradcam", "gradcampp", "smoothgrad")
            }

    result = {
        "benchmark": "ensemble inference vs bare torch forward; CAM cost",
        "compared": "bare = no_grad forward of each member on prepared batches; ensemble_tensors = the same batches "
        "through BundlePredictor.forward + the fitted combination; ensemble_files = EnsemblePredictor.predict "
        "from 512x400 PNG files (decode + preprocessing + scoring)",
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "members": list(MEMBERS),
        "image_size": args.image_size,
        "images": args.images,
        "batch_size": args.batch_size,
        "images_per_s": {k: round(v, 2) for k, v in throughput.items()},
        "ratio_to_bare": {k: round(v / throughput["bare"], 3) for k, v in throughput.items()},
        "cam_seconds_per_image": {n: {m: round(s, 4) for m, s in v.items()} for n, v in cams.items()},
        "torch": torch.__version__,
    }
    out = REPO / "benchmarks" / "results" / ("inference_cuda.json" if device.type == "cuda" else "inference.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
