"""Run by ``torchrun --nnodes 2`` in test_multinode.py: every bundle's multi-GPU config, built on each rank.

``python -m tests.bundles.multinode_probe ROOT WORK BUNDLE...`` joins the process group through
the bundle's own ``initialize`` (``init_distributed``), then resolves ``train#trainer`` from
``train.json`` + ``multi_gpu_train.json``: the DDP-wrapped network (built from weights seeded by
rank, so only DDP's broadcast of rank 0's weights makes them equal), this rank's shards, the
handlers this rank keeps. Nothing is trained. Each rank writes what it built to
``WORK/<bundle>/node<GROUP_RANK>/rank<RANK>.json``.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from monai.bundle import ConfigParser

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
# small and quick: no caching, a narrow VGG head (its 4096-wide one is 120 M parameters)
OVERRIDES = {"image_size": 32, "num_workers": 0}
EXTRA = {"vgg19": {"classifier_width": 256}}
NO_CACHE = ("train#dataset#cache_rate", "validate#dataset#cache_rate", "reference_cache_rate")


def parameters_sha256(module: torch.nn.Module) -> str:
    """One hash of every parameter's bytes, in ``parameters()`` order."""
    digest = hashlib.sha256()
    for p in module.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _handlers(parser: ConfigParser, id: str) -> list[str]:
    """The class names of the handler list at ``id`` as this rank resolved it (none if the engine has no list)."""
    return [type(h).__name__ for h in parser.get_parsed_content(id)] if parser.get(id) is not None else []


def probe(bundle: str, root: str, work: Path) -> dict:
    folder = work / bundle / f"node{os.environ['GROUP_RANK']}"
    parser = ConfigParser()
    parser.read_meta(str(BUNDLES / bundle / "configs" / "metadata.json"))
    parser.read_config([str(BUNDLES / bundle / "configs" / f) for f in ("train.json", "multi_gpu_train.json")])
    parser.update({"bundle_root": str(BUNDLES / bundle), "dataset_dir": root, "ckpt_dir": str(folder / "models"),
                   "output_dir": str(folder / "out"), **OVERRIDES, **EXTRA.get(bundle, {})})
    parser.update({key: 0.0 for key in NO_CACHE if parser.get(key) is not None})
    parser.get_parsed_content("initialize")
    # each rank its own initial weights: equal weights after DDP wrapped them come from rank 0's broadcast
    torch.manual_seed(1000 + dist.get_rank())
    unwrapped = parameters_sha256(parser.get_parsed_content("network_def"))
    trainer = parser.get_parsed_content("train#trainer")
    network = trainer.network
    result = {
        "bundle": bundle, "rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
        "device": str(parser.get_parsed_content("torch_device")), "network": type(network).__name__,
        "initial_sha256": unwrapped, "parameters_sha256": parameters_sha256(network),
        "train_shard": [r["image"] for r in parser.get_parsed_content("train#dataset#data")],
        "train_datalist": [r["image"] for r in parser.get_parsed_content("train_datalist")],
        "train_handlers": _handlers(parser, "train#trainer#train_handlers"),
        "val_handlers": _handlers(parser, "validate#evaluator#val_handlers"),
    }
    dist.barrier()  # every rank built its trainer before rank 0 goes on (and may write) for the next bundle
    return result


def main(root: str, work: str, *bundles: str) -> None:
    env = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE")}
    for bundle in bundles:
        result = probe(bundle, root, Path(work)) | {"env": env}
        out = Path(work, bundle, f"node{env['GROUP_RANK']}", f"rank{env['RANK']}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
