"""Ensemble inference throughput of each backend against eager PyTorch, and the cost of each CAM method.

Compared, on the same networks, the same images and the same batches, in one run:
- ``bare``: ``torch.no_grad(); network(x)`` per member in eager PyTorch, nothing else;
- ``backends``: the ensemble's scoring path from prepared tensors (each member's
  ``BundlePredictor.forward`` and the fitted combination) on each backend of
  :mod:`mura_monai.backends` (``torch`` = eager, plus AMP and channels_last on CUDA; ``torchscript``
  and ``onnxruntime`` = the members exported by ``mura-monai export`` and validated), and eager
  with channels_last on the CPU for reference; each with its images/s, its ratio to the torch
  backend, and its largest probability difference from it;
- ``ensemble_files``: ``EnsemblePredictor.predict`` from PNG files on the default (``auto``)
  backend, decoding and preprocessing included.
CAMs: seconds per image for Grad-CAM, Grad-CAM++ and SmoothGrad on each member.
On CUDA also the MURA valid set's size (3,197 images) through the ensemble, against a bare forward.

Members are the demo's (densenet169_wbce, resnet50) with random weights, at their bundles' own input
sizes unless ``--image-size`` says otherwise: throughput does not depend on what the weights learned.
Writes ``benchmarks/results/inference[_cuda].json``.

    python benchmarks/inference.py [--device auto] [--image-size 0] [--images 48] [--batch-size 16]
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
from mura_monai.export import export_bundle  # noqa: E402
from mura_monai.model_settings import save_model_settings  # noqa: E402

MEMBERS = {"densenet169_wbce": {}, "resnet50": {}}


def _write_members(base: Path, image_size: int) -> Path:
    members = base / "members"
    for name, extra in MEMBERS.items():
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / name / "configs" / "inference.json"))
        parser["bundle_root"] = str(REPO / "bundles" / name)
        settings = {"image_size": image_size, **extra} if image_size else dict(extra)  # 0: the bundle's own size
        for key, value in settings.items():
            parser[key] = value
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def")
        (members / name).mkdir(parents=True)
        torch.save(network.state_dict(), members / name / "model.pt")
        save_model_settings(members / name, **settings)
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


def _sizes(predictor) -> dict:
    return {name: member.input_size for name, member in zip(predictor.member_names, predictor.members)}


def _predictor(base: Path, members_dir: Path, device: torch.device, batch_size: int, backend: str | None,
               fitted) -> EnsemblePredictor:
    predictor = EnsemblePredictor(REPO / "bundles" / "ensemble", device=str(device), members_models_dir=members_dir,
                                  models_dir=base / "models", fitted=False, overrides={"batch_size": batch_size},
                                  backend=backend)
    predictor.fitted = fitted
    return predictor


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=0, help="0: each member bundle's own input size")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cam-images", type=int, default=2)
    parser.add_argument("--valid-images", type=int, default=3197, help="CUDA only: the MURA valid set's size")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        members_dir = _write_members(base, args.image_size)
        for name in MEMBERS:
            export_bundle(REPO / "bundles" / name, members_dir / name)
        paths = _write_images(base / "images", args.images)
        rng = np.random.default_rng(0)
        P = rng.random((60, len(MEMBERS)))
        fitted = fit_ensemble_parameters(P, np.repeat([0, 1], 30), [f"s{i}" for i in range(60)], ["XR_WRIST"] * 60,
                                         list(MEMBERS))
        eager = _predictor(base, members_dir, device, args.batch_size, "torch", fitted)
        loaded = [eager.members[0].load(p) for p in paths]
        prepared = [[m.prepare(item) for item in loaded] for m in eager.members]
        batches = [[member[i:i + args.batch_size] for i in range(0, len(paths), args.batch_size)] for member in prepared]
        stacked = [[torch.stack(b).to(device) for b in member] for member in batches]

        def bare() -> None:
            with torch.no_grad():
                for member, member_batches in zip(eager.members, stacked):
                    for x in member_batches:
                        member.loaded.network(x)

        def scoring(predictor) -> np.ndarray:
            columns = [sum((m.forward(b) for b in member_batches), []) for m, member_batches in zip(predictor.members, batches)]
            return predictor.fitted(np.asarray(columns).T)

        seconds = {"bare": _timed(bare, device, args.repeats)}
        probabilities, chosen = {}, {}
        variants = {"torch": ("torch", {}), "torchscript": ("torchscript", {}), "onnxruntime": ("onnxruntime", {})}
        if device.type == "cpu":
            variants["torch_channels_last"] = ("torch", {"channels_last": True})
        for label, (backend, overrides) in variants.items():
            if backend == "onnxruntime" and device.type == "cuda":
                continue  # the CPU wheel of ONNX Runtime has no CUDA provider
            predictor = _predictor(base, members_dir, device, args.batch_size, backend, fitted)
            for member in predictor.members:
                if overrides:
                    from mura_monai.backends import make_runner

                    member.runner = make_runner(member.backend, member.loaded.network, device, **overrides)
            chosen[label] = [m.backend.name for m in predictor.members]
            seconds[label] = _timed(partial(scoring, predictor), device, args.repeats)
            probabilities[label] = scoring(predictor)
            del predictor
        auto = _predictor(base, members_dir, device, args.batch_size, None, fitted)
        seconds["ensemble_files"] = _timed(partial(auto.predict, paths), device, max(1, args.repeats - 1))
        throughput = {k: args.images / v for k, v in seconds.items()}

        valid = {}
        if device.type == "cuda":  # the figure: the MURA valid set through the ensemble in seconds
            n = args.valid_images
            big = [torch.cat([b for b in member_batches] * (n // args.images + 1))[:n] for member_batches in stacked]

            def valid_bare() -> None:
                with torch.no_grad():
                    for member, x in zip(eager.members, big):
                        for i in range(0, n, 64):
                            member.loaded.network(x[i:i + 64])

            def valid_ensemble() -> None:
                for member, x in zip(auto.members, big):
                    for i in range(0, n, 64):
                        member.forward(list(x[i:i + 64]))
            valid = {"images": n, "batch": 64, "bare_fp32_s": round(_timed(valid_bare, device, 1), 2),
                     "ensemble_s": round(_timed(valid_ensemble, device, 1), 2),
                     "backends": [m.backend.name for m in auto.members]}

        cams = {}
        for index, (member, name) in enumerate(zip(eager.members, eager.member_names)):
            x = torch.stack(prepared[index][: args.cam_images]).to(device)
            cams[name] = {
                method: _timed(partial(compute_cam, member.loaded.network, x, method=method), device, 1) / len(x)
                for method in ("gradcam", "gradcampp", "smoothgrad")
            }
        sizes = _sizes(eager)

    reference = probabilities["torch"]
    result = {
        "benchmark": "ensemble inference per backend vs eager PyTorch; CAM cost",
        "compared": __doc__.split("Compared, ")[1].split("\n\n")[0].replace("\n", " "),
        "device": _machine(device),
        "members": list(MEMBERS),
        "input_sizes": sizes,
        "images": args.images,
        "batch_size": args.batch_size,
        "backends_used": chosen,
        "images_per_s": {k: round(v, 2) for k, v in throughput.items()},
        "ratio_to_torch": {k: round(v / throughput["torch"], 3) for k, v in throughput.items()},
        "max_probability_difference_to_torch": {k: float(np.abs(v - reference).max()) for k, v in probabilities.items()},
        "cam_seconds_per_image": {n: {m: round(s, 4) for m, s in v.items()} for n, v in cams.items()},
        **({"mura_valid_set": valid} if valid else {}),
        "torch": torch.__version__,
    }
    out = REPO / "benchmarks" / "results" / ("inference_cuda.json" if device.type == "cuda" else "inference.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
