"""The few DDP facts a bundle's ``multi_gpu_train.json`` needs, for ``torchrun``.

``torchrun`` sets RANK / LOCAL_RANK / WORLD_SIZE; the process group uses NCCL when every rank
has a GPU and Gloo otherwise, so the same override file trains on a GPU node and on CPU cores
(which is how the tests run it).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["init_distributed", "distributed_device", "is_main_process", "rank_shard"]


def init_distributed() -> int:
    """Join the process group ``torchrun`` described (once); returns this process's rank."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank()


def distributed_device() -> torch.device:
    """This rank's GPU (LOCAL_RANK) when there is one, else the CPU."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def is_main_process() -> bool:
    """Rank 0, or a plain single-process run: the one that writes checkpoints and logs."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def rank_shard(data: list, shuffle: bool = False, seed: int = 0) -> list:
    """This rank's share of ``data``, every rank the same length (short lists repeat items).

    MONAI's ``partition_dataset`` refuses lists shorter than the number of ranks, which a small
    body part's validation set can be; an empty shard would stop Ignite. Repeated items are
    harmless: ``StudyAUC`` counts each image once when it gathers the ranks' predictions.
    """
    if not (dist.is_available() and dist.is_initialized()) or not data:
        return list(data)
    world, rank = dist.get_world_size(), dist.get_rank()
    order = np.random.default_rng(seed).permutation(len(data)) if shuffle else np.arange(len(data))
    padded = np.resize(order, -(-len(data) // world) * world)
    return [data[i] for i in padded[rank::world]]
