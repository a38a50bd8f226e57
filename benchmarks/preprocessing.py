"""Is the training data path fast enough to keep the model busy?

Compares, at the same image size, the images/s of
  * the data path of the densenet169_wbce bundle (read PNG → enhancement → aspect-preserving
    resize → flip/rotate augmentation → normalise), through a MONAI DataLoader with
    ``num_workers`` processes, uncached (every epoch re-reads) and as the bundle runs it
    (CacheDataset holding the deterministic part; only augmentation per epoch);
  * DenseNet-169 forward + backward + Adam step on batches of the same size.
The aim is data path ≥ 3× the model. Figures go to benchmarks/results/preprocessing.json.

    python benchmarks/preprocessing.py [--image-size 128] [--patients 40] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, NormalizeIntensityd, RandFlipd, RandRotated

from mura_monai.data import LoadRadiographd, generate_mura_root, mura_datalist
from mura_monai.networks import densenet169
from mura_monai.transforms import ResizeWithAspectPadd
from mura_monai.transforms.enhancement import enhancement_transforms

RESULTS = Path(__file__).resolve().parent / "results" / "preprocessing.json"


def _pipeline(size: int, enhancement: str) -> tuple[list, list]:
    deterministic = [LoadRadiographd(keys="image"), *enhancement_transforms(enhancement),
                     ResizeWithAspectPadd(keys="image", spatial_size=size)]
    random = [
        RandFlipd(keys="image", prob=0.5, spatial_axis=1),
        RandRotated(keys="image", range_x=0.5236, prob=0.5, padding_mode="zeros"),
        NormalizeIntensityd(keys="image", subtrahend=0.449, divisor=0.226),
    ]
    return deterministic, random


def _loader_rate(dataset, batch_size: int, workers: int, epochs: int = 2) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def _model_rate(size: int, batch_size: int, steps: int) -> float:
    net = densenet169()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(batch_size, 1, size, size)
    y = torch.randint(0, 2, (batch_size, 1)).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(1):  # warm-up
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model-steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as tmp:
        generate_mura_root(Path(tmp) / "mura", patients=args.patients, seed=0)
        data = mura_datalist(Path(tmp) / "mura", "train")
        rows = {}
        for enhancement in ("none", "clahe", "sobel"):
            det, rnd = _pipeline(args.image_size, enhancement)
            uncached = _loader_rate(Dataset(data, Compose(det + rnd)), args.batch_size, args.workers)
            cached_ds = CacheDataset(data, Compose(det + rnd), cache_rate=1.0, num_workers=args.workers, progress=False)
            cached = _loader_rate(cached_ds, args.batch_size, args.workers)
            rows[enhancement] = {"uncached_images_per_s": round(uncached, 1), "cached_images_per_s": round(cached, 1)}
            print(f"data path ({enhancement:>5}): uncached {uncached:7.1f} img/s, cached (as trained) {cached:7.1f} img/s")
    model = _model_rate(args.image_size, args.batch_size, args.model_steps)
    print(f"DenseNet-169 fwd+bwd+step at {args.image_size}px: {model:.1f} img/s")
    for row in rows.values():
        row["uncached_ratio_to_model"] = round(row["uncached_images_per_s"] / model, 2)
        row["cached_ratio_to_model"] = round(row["cached_images_per_s"] / model, 2)
    result = {
        "compared": "training data path (read, enhancement, resize, augment, normalise; MONAI DataLoader) "
        "vs DenseNet-169 forward+backward+Adam step, images/s at the same size and batch",
        "aim": "data path >= 3x model",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "images": len(data),
        "model_images_per_s": round(model, 1),
        "data_path": rows,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "worst_ratio": min(min(r["uncached_ratio_to_model"], r["cached_ratio_to_model"]) for r in rows.values()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
