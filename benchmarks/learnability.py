"""Is a MURA root learnable at all? A small CNN probe, to tell data limits from CPU-budget limits.

The bundles' networks (12-140 M parameters) trained from scratch for a few CPU minutes barely
leave chance on a synthetic root of a few hundred patients. That can mean the generator's
findings are too subtle, or that the big networks need more optimiser steps than a few minutes
give. This script trains a 5-block CNN (0.1 M parameters; ~10 s an epoch at 128 px on 2 cores)
on the same images, resized the bundles' way, with global average and then global max pooling,
and reports the validation study AUC per epoch. If it climbs well above 0.5, the data carry a
learnable signal and a bundle's shortfall is its training budget.

It also fits an *intensity-only* probe: a logistic regression on what says nothing about shape
(the image's intensity histogram, its share of near-white pixels, its size and aspect). Metal
and casts are findings that brighten an image, on real radiographs as here, so this probe is
above 0.5; it is the floor a network must beat to show it sees more than brightness. Markers,
rulers and exposure are drawn in both classes at the same rates, so they add nothing to it
(Huschauer's warning about MURA models winning on such confounders).

    python benchmarks/learnability.py --dataset-dir /tmp/s140/mura --image-size 128 --epochs 12
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from monai.utils import set_determinism
from torch import nn

from mura_monai.data import LoadRadiographd, mura_datalist
from mura_monai.metrics import aggregate_studies, binary_metrics
from mura_monai.networks.factory import global_pooling
from mura_monai.transforms import ResizeWithAspectPadd

MEAN, STD = 0.449, 0.226


def small_cnn(pooling: str) -> nn.Module:
    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(1, 8), block(8, 16), block(16, 32), block(32, 64), block(64, 64),
                         global_pooling(pooling), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 1))


def load(root: str, split: str, size: int) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    records = mura_datalist(root, split)
    resize = ResizeWithAspectPadd(keys="image", spatial_size=size)
    loader = LoadRadiographd(keys="image")
    images, shapes = [], []
    for r in records:
        loaded = loader(dict(r))
        shapes.append(tuple(np.asarray(loaded["image"]).shape[-2:]))
        images.append(torch.as_tensor(np.asarray(resize(loaded)["image"]), dtype=torch.float32))
    records = [r | {"source_shape": s} for r, s in zip(records, shapes)]
    images = torch.stack(images)
    return records, (images - MEAN) / STD, torch.tensor([r["label"] for r in records], dtype=torch.float32)


def probe_network(name: str, pooling: str) -> nn.Module:
    """The probe (``small``) or a bundle's network, to run it in the same bare loop."""
    if name == "small":
        return small_cnn(pooling)
    from mura_monai.networks import factory

    return getattr(factory, name)(pooling=pooling)


def train_probe(data: dict, pooling: str, epochs: int, batch_size: int, lr: float, seed: int,
                network: str = "small") -> list[dict]:
    set_determinism(seed)
    (_, x_train, y_train), (valid, x_valid, _) = data["train"], data["valid"]
    net = probe_network(network, pooling)
    optimizer = torch.optim.Adam(net.parameters(), lr)
    pos_weight = (1 - y_train.mean()) / y_train.mean()
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        net.train()
        for idx in torch.randperm(len(x_train)).split(batch_size):
            x = x_train[idx]
            x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x.flip(-1), x)  # lateral flips, as the bundles
            loss = nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(1), y_train[idx], pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            probs = torch.cat([torch.sigmoid(net(b)).squeeze(1) for b in x_valid.split(64)]).tolist()
        studies = aggregate_studies([r | {"probability": p} for r, p in zip(valid, probs)], "mean")
        auc = binary_metrics([s["label"] for s in studies], [s["probability"] for s in studies])["auc"]
        history.append({"epoch": epoch, "study_auc": auc, "epoch_s": round(time.perf_counter() - start, 2)})
        print(f"  {pooling} pooling, epoch {epoch}: study AUC {auc:.3f} ({history[-1]['epoch_s']:.1f} s)", flush=True)
    return history


def intensity_features(records: list[dict], images: torch.Tensor) -> np.ndarray:
    """Per image: 16-bin intensity histogram, share of pixels above 0.9 and 0.97, size, aspect."""
    x = images[:, 0] * STD + MEAN
    feats = []
    for r, im in zip(records, x):
        hist = torch.histc(im, bins=16, min=0.0, max=1.0) / im.numel()
        h, w = r["source_shape"]
        feats.append([*hist.tolist(), float((im > 0.9).float().mean()), float((im > 0.97).float().mean()),
                      max(h, w) / 512.0, w / h])
    return np.asarray(feats)


def intensity_probe(data: dict) -> float:
    """Validation study AUC of a logistic regression on the shape-blind features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (train, x_train, y_train), (valid, x_valid, _) = data["train"], data["valid"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    clf.fit(intensity_features(train, x_train), y_train.numpy())
    probs = clf.predict_proba(intensity_features(valid, x_valid))[:, 1].tolist()
    studies = aggregate_studies([r | {"probability": p} for r, p in zip(valid, probs)], "mean")
    return binary_metrics([s["label"] for s in studies], [s["probability"] for s in studies])["auc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", required=True, help="a MURA root (e.g. from mura-monai synth)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--pooling", nargs="+", default=["avg", "max"])
    parser.add_argument("--network", default="small",
                        help="small (the probe) or a mura_monai.networks.factory name such as densenet169")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/learnability.json")
    args = parser.parse_args()

    start = time.perf_counter()
    data = {split: load(args.dataset_dir, split, args.image_size) for split in ("train", "valid")}
    load_s = time.perf_counter() - start
    n_studies = len({r["study"] for r in data["valid"][0]})
    print(f"{len(data['train'][0])} training images, {len(data['valid'][0])} valid images ({n_studies} studies); "
          f"loaded in {load_s:.1f} s", flush=True)
    intensity_auc = intensity_probe(data)
    print(f"intensity-only probe (histogram, near-white share, size, aspect): study AUC {intensity_auc:.3f}", flush=True)
    runs = {p: train_probe(data, p, args.epochs, args.batch_size, args.learning_rate, args.seed, args.network)
            for p in args.pooling}
    result = {
        "what": "validation study AUC per epoch of "
                f"{'a 5-block CNN (0.1 M parameters)' if args.network == 'small' else args.network} "
                "trained from scratch on the root in a bare torch loop",
        "dataset_dir": str(args.dataset_dir),
        "train_images": len(data["train"][0]), "valid_images": len(data["valid"][0]), "valid_studies": n_studies,
        "image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "seed": args.seed,
        "network": args.network,
        "parameters": sum(p.numel() for p in probe_network(args.network, "avg").parameters()),
        "intensity_probe": {"what": "logistic regression on shape-blind features: 16-bin intensity histogram, "
                                   "share of pixels > 0.9 and > 0.97, image size and aspect",
                           "study_auc": intensity_auc},
        "runs": {p: {"best_study_auc": max(h["study_auc"] for h in hist), "final_study_auc": hist[-1]["study_auc"],
                     "train_s": round(sum(h["epoch_s"] for h in hist), 1), "history": hist} for p, hist in runs.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
