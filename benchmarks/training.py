"""What does each bundle's MONAI trainer cost over a bare torch loop?

For every bundle, one training epoch's wall time of
  * the bundle's own ``train#trainer`` (a MONAI ``SupervisedTrainer``, built from
    ``configs/train.json`` with ``train#handlers`` set to ``[]`` so that only the training epoch
    runs: no validation, summary, stats or TensorBoard handler; the ``training`` list's early
    stopper, epoch checkpoint and resume are not attached either);
  * a bare torch loop over the SAME ``train#dataloader`` object (same cached dataset, transforms,
    shuffling and batch size), the same ``train#prepare_batch``, network, loss and optimizer:
    ``zero_grad`` → forward → ``loss(...).mean()`` → ``backward`` → ``step`` (autocast and a
    GradScaler when the trainer uses AMP, i.e. on CUDA);
  * the dataloader alone (iterate the epoch, no model), to show what the data path costs.
Before every timed run the network and optimizer go back to their initial state and
``monai.utils.set_determinism(0)`` is called, so both loops see the same batches in the same
order. Warm-up before the timed runs: one bare step on a full batch and one on a batch of the
epoch's last, smaller size (weights then restored). The aim is trainer ≤ 1.2× the bare loop.
Figures go to benchmarks/results/training.json.

    python benchmarks/training.py [--bundles densenet169_wbce resnet50 vgg19 efficientnet_b0_router]
        [--patients 40] [--image-size 96] [--batch-size 16] [--num-workers 2] [--device auto]
        [--repeats 1] [--override KEY=VALUE ...] [--output benchmarks/results/training.json]

efficientnet_b0_router trains one ``target`` per config run; the benchmark times ``target=router``
(the 7-class body-part router, an ordinary SupervisedTrainer) on the training split that the
bundle keeps after its patient hold-out.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from mura_monai.data import generate_mura_root

ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = ROOT / "bundles"
RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
BUNDLES = ("densenet169_wbce", "resnet50", "vgg19", "efficientnet_b0_router")
AIM = 1.2
SEED = 0


def _value(text: str):
    """``--override`` values: JSON when they parse (numbers, true, null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parser(bundle: str, dataset_dir: Path, work: Path, args, overrides: dict) -> ConfigParser:
    bundle_root = BUNDLES_DIR / bundle
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.json"))
    settings = {
        "bundle_root": str(bundle_root),
        "dataset_dir": str(dataset_dir),
        "ckpt_dir": str(work / bundle / "models"),
        "output_dir": str(work / bundle / "eval"),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "max_epochs": 1,
        "val_interval": 10**6,
        "device": args.device,
        "seed": SEED,
        "train#handlers": [],
        "train#dataset#progress": False,
    }
    if bundle == "efficientnet_b0_router":
        settings["target"] = "router"
    for key, value in {**settings, **overrides}.items():
        if key in parser or "#" not in key:
            parser[key] = value
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _restore(network, optimizer, state) -> None:
    network.load_state_dict(copy.deepcopy(state[0]))
    optimizer.load_state_dict(copy.deepcopy(state[1]))


def _bare_step(batchdata, network, loss_fn, optimizer, prepare_batch, device, scaler):
    inputs, targets = prepare_batch(batchdata, device, False)[:2]
    optimizer.zero_grad()
    if scaler is not None:
        with torch.autocast("cuda"):
            loss = loss_fn(network(inputs), targets).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss = loss_fn(network(inputs), targets).mean()
        loss.backward()
        optimizer.step()
    return loss, inputs.shape[0]


def _head(batchdata: dict, n: int) -> dict:
    """The first ``n`` images of a collated batch (tensors and per-image lists cut, the rest kept)."""
    size = len(batchdata["image"])
    return {k: v[:n] if isinstance(v, (torch.Tensor, list, tuple)) and len(v) == size else v for k, v in batchdata.items()}


def _time_trainer(trainer, device) -> tuple[float, int, float]:
    set_determinism(SEED)
    _sync(device)
    start = time.perf_counter()
    trainer.run()
    _sync(device)
    seconds = time.perf_counter() - start
    output = trainer.state.output  # decollated: one dict per image, the batch loss repeated
    last = output[0]["loss"] if isinstance(output, list) else output["loss"]
    return seconds, trainer.state.iteration, float(torch.as_tensor(last).detach())


def _time_bare(loader, network, loss_fn, optimizer, prepare_batch, device, amp) -> tuple[float, int, float]:
    scaler = torch.amp.GradScaler("cuda") if amp else None
    set_determinism(SEED)
    _sync(device)
    start = time.perf_counter()
    network.train()
    iterations, loss = 0, None
    for batchdata in loader:
        loss, _ = _bare_step(batchdata, network, loss_fn, optimizer, prepare_batch, device, scaler)
        iterations += 1
    _sync(device)
    return time.perf_counter() - start, iterations, float(loss.detach())


def _time_loader(loader) -> tuple[float, int]:
    set_determinism(SEED)
    start = time.perf_counter()
    images = 0
    for batchdata in loader:
        images += len(batchdata["image"])
    return time.perf_counter() - start, images


def bench_bundle(bundle: str, dataset_dir: Path, work: Path, args, overrides: dict) -> dict:
    set_determinism(SEED)
    parser = _parser(bundle, dataset_dir, work, args, overrides)
    start = time.perf_counter()
    dataset = parser.get_parsed_content("train#dataset")  # CacheDataset: the deterministic part, cached once
    cache_s = time.perf_counter() - start
    trainer = parser.get_parsed_content("train#trainer")
    loader = parser.get_parsed_content("train#dataloader")
    network, loss_fn, optimizer = (parser.get_parsed_content(key) for key in ("network", "loss", "optimizer"))
    prepare_batch = parser.get_parsed_content("train#prepare_batch")
    assert trainer.data_loader is loader and trainer.network is network and trainer.optimizer is optimizer
    device, amp = trainer.state.device, bool(trainer.amp)
    initial = (copy.deepcopy(network.state_dict()), copy.deepcopy(optimizer.state_dict()))

    # warm-up: one bare iteration on the first batch, and one on a batch of the epoch's last
    # (smaller) size when there is one, so that neither timed loop pays for first-call kernel
    # set-up of a new input shape; then back to the initial weights
    network.train()
    scaler = torch.amp.GradScaler("cuda") if amp else None
    first = next(iter(loader))
    remainder = len(dataset) % args.batch_size
    for batchdata in (first, _head(first, remainder)) if remainder else (first,):
        _bare_step(batchdata, network, loss_fn, optimizer, prepare_batch, device, scaler)
    _sync(device)

    runs = []
    for repeat in range(args.repeats):
        run = {}
        order = ("trainer", "bare") if repeat % 2 == 0 else ("bare", "trainer")
        for which in order:
            _restore(network, optimizer, initial)
            if which == "trainer":
                run["trainer_epoch_s"], run["trainer_iterations"], run["trainer_last_loss"] = _time_trainer(trainer, device)
            else:
                run["bare_epoch_s"], run["bare_iterations"], run["bare_last_loss"] = _time_bare(
                    loader, network, loss_fn, optimizer, prepare_batch, device, amp)
        run["dataloader_only_s"], run["images_seen"] = _time_loader(loader)
        run = {k: round(v, 4) if isinstance(v, float) else v for k, v in run.items()}
        runs.append(run)
        print(f"  {bundle} repeat {repeat + 1}/{args.repeats}: trainer {run['trainer_epoch_s']:.2f} s, "
              f"bare {run['bare_epoch_s']:.2f} s, dataloader {run['dataloader_only_s']:.2f} s", flush=True)

    trainer_s = min(r["trainer_epoch_s"] for r in runs)
    bare_s = min(r["bare_epoch_s"] for r in runs)
    ratio = trainer_s / bare_s
    return {
        "trainer_epoch_s": round(trainer_s, 3),
        "bare_epoch_s": round(bare_s, 3),
        "ratio": round(ratio, 3),
        "meets_aim": ratio <= AIM,
        "dataloader_only_s": round(min(r["dataloader_only_s"] for r in runs), 3),
        "dataset_cache_s": round(cache_s, 3),
        "images": len(dataset),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "iterations": runs[0]["trainer_iterations"],
        "device": str(device),
        "amp": amp,
        "parameters": sum(p.numel() for p in network.parameters()),
        "trainable_parameters": sum(p.numel() for p in network.parameters() if p.requires_grad),
        "same_last_loss": all(abs(r["trainer_last_loss"] - r["bare_last_loss"]) <= 1e-4 * max(1.0, abs(r["bare_last_loss"]))
                              for r in runs),
        **({"target": "router"} if bundle == "efficientnet_b0_router" else {}),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto: the first CUDA device when there is one, else the CPU")
    parser.add_argument("--repeats", type=int, default=1, help="timed epochs of each loop; the fastest is reported")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every bundle (e.g. classifier_width=1024), applied last; "
                             "keys a bundle lacks are skipped when they name a nested (#) id")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    overrides = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--override wants KEY=VALUE, got {item!r}")
        overrides[key] = _value(value)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "mura"
        summary = generate_mura_root(dataset_dir, patients=args.patients, seed=0)
        print(f"synthetic root: {args.patients} patients, {summary['images']} images", flush=True)
        for bundle in args.bundles:
            results[bundle] = bench_bundle(bundle, dataset_dir, Path(tmp) / "work", args, overrides)

    print(f"\n{'bundle':<24}{'images':>7}{'iters':>6}{'trainer s':>11}{'bare s':>9}{'ratio':>7}{'loader s':>10}  aim<={AIM}")
    for bundle, row in results.items():
        print(f"{bundle:<24}{row['images']:>7}{row['iterations']:>6}{row['trainer_epoch_s']:>11.2f}{row['bare_epoch_s']:>9.2f}"
              f"{row['ratio']:>7.2f}{row['dataloader_only_s']:>10.2f}  {'yes' if row['meets_aim'] else 'NO'}")

    result = {
        "compared": "one training epoch's wall time: each bundle's train#trainer (MONAI SupervisedTrainer, run() with "
        "max_epochs=1) vs a bare torch loop (prepare_batch, zero_grad, forward, loss.mean(), backward, step) over the "
        "same train#dataloader, network, loss and optimizer; plus the dataloader iterated alone",
        "aim": f"ratio <= {AIM}",
        "method": {
            "trainer_handlers": "train#handlers overridden to [] (no ValidationHandler, TrainingSummaryWriter, "
            "StatsHandler, TensorBoardStatsHandler); the 'training' list (early stopper, epoch checkpoint, resume) "
            "is not run; train#dataset#progress=false",
            "warm_up": "before the timed runs, one bare fwd+bwd+step on a full batch and one on a batch of the "
            "epoch's last (remainder) size, so no timed loop pays first-call set-up for a new shape; weights restored after",
            "between_runs": "network and optimizer reset to their initial state_dict (deep copies), "
            "monai.utils.set_determinism(0) before each timed epoch, so both loops see the same batches",
            "repeats": args.repeats,
            "reported": "fastest of the repeats for each loop; ratio = trainer_epoch_s / bare_epoch_s; "
            "order trainer→bare on even repeats, bare→trainer on odd ones",
            "bare_loop_zero_grad": "optimizer.zero_grad() (set_to_none=True, the torch default); the trainer's "
            "default optim_set_to_none=False zero-fills the gradients",
            "same_last_loss": "the last iteration's loss of both loops agrees (same batches, same weights)",
            "efficientnet_b0_router": "target=router (7-class body-part router); its training split is the bundle's "
            "holdout_split of the train images",
        },
        "patients": args.patients,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": next(iter(results.values()))["device"],
        "overrides": overrides,
        "bundles": results,
        "all_meet_aim": all(r["meets_aim"] for r in results.values()),
        "worst_ratio": max(r["ratio"] for r in results.values()),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "monai": monai.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
