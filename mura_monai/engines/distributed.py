"""The few DDP facts a bundle's ``multi_gpu_train.json`` needs, for ``torchrun``.

``torchrun`` sets RANK / LOCAL_RANK / WORLD_SIZE; the process group uses NCCL when every rank
has a GPU and Gloo otherwise, so the same override file trains on a GPU node and on CPU cores
(which is how the tests run it).

The world may span several nodes (``torchrun --nnodes N`` with a c10d rendezvous). RANK is then
the rank in the whole job and LOCAL_RANK the rank on this node: the first process of the node
c10d numbers second has RANK = nproc_per_node but LOCAL_RANK 0. GPUs are numbered per node, so the device
always comes from LOCAL_RANK; what is written once per job (checkpoints, summaries, logs) from
global rank 0 only (:func:`is_main_process`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["init_distributed", "distributed_device", "is_main_process", "local_rank", "rank_shard"]


def local_rank() -> int:
    """This process's rank on its own node (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def _local_cuda_device() -> torch.device:
    """The GPU of this node that LOCAL_RANK names (never RANK: on node 2 of 2, rank 1 is local rank 0)."""
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(f"LOCAL_RANK {index} but this node has {count} GPU(s): "
                           f"torchrun's --nproc_per_node must not exceed the GPUs of each node")
    return torch.device(f"cuda:{index}")


def init_distributed() -> int:
    """Join the process group ``torchrun`` described (once); returns this process's global rank.

    With NCCL the process first selects its node-local GPU, so collectives issued before the
    network is built (a barrier, a gather) do not all land on ``cuda:0`` or guess the GPU from
    the global rank.
    """
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"multi_gpu_train.json runs under torchrun, which sets {', '.join(missing)}: "
                               "start it with `torchrun --nproc_per_node=N -m monai.bundle run ...`")
        use_nccl = torch.cuda.is_available() and dist.is_nccl_available()
        if use_nccl:
            torch.cuda.set_device(_local_cuda_device())
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return dist.get_rank()


def distributed_device() -> torch.device:
    """This rank's GPU on its node (LOCAL_RANK) when there is one, else the CPU."""
    if torch.cuda.is_available():
        device = _local_cuda_device()
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def is_main_process() -> bool:
    """Global rank 0, or a plain single-process run: the one that writes checkpoints and logs.

    Global, not per node (LOCAL_RANK 0): the checkpoint, ``training_summary.json``, the model
    settings and the TensorBoard log describe one training, whichever nodes ran it. With a
    ``--ckpt_dir`` every node shares, one writer per node would race on the same files; with a
    directory per node the other nodes' copies would be a second, unvalidated model (only rank 0
    keeps the best-model saver). So exactly one process in the job writes them.
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def rank_shard(data: list, shuffle: bool = False, seed: int = 0) -> list:
    """This rank's share of ``data``, every rank the same length (short lists repeat items).

    Shards follow the global rank over the whole world (every node's processes), so no two
    ranks, on one node or on two, train on the same item except for the padding.

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
