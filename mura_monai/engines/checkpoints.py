"""Resuming a bundle's training from the last epoch checkpoint.

Training on the full MURA set takes hours and preemptible GPU nodes get killed. Every epoch the
trainer's ``CheckpointSaver`` writes ``checkpoint_epoch=N.pt`` (model, optimizer, LR schedule,
trainer state); ``--resume true`` picks the newest one up, and restores the best-model saver's
tracking list from ``training_summary.json`` so a worse epoch after the restart cannot overwrite the best
model. MONAI's ``CheckpointLoader`` does the loading; this module only finds the files.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch.distributed as dist
from monai.handlers import CheckpointLoader

from mura_monai.engines.distributed import is_main_process
from mura_monai.engines.training_summary import read_training_summary
from mura_monai.model_settings import as_flag

__all__ = ["BEST_MODEL_FILE", "attach_resume", "last_checkpoint"]

logger = logging.getLogger(__name__)

BEST_MODEL_FILE = "model.pt"
_EPOCH_FILE = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def last_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the largest N in ``ckpt_dir``, or None."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _EPOCH_FILE.search(p.name))]
    return max(found)[1] if found else None


def attach_resume(trainer, ckpt_dir: str | Path, resume: bool, load_dict: dict, best_saver=None,
                  map_location=None) -> Path | None:
    """Restore the last epoch checkpoint into ``trainer`` when its run starts; returns its path.

    Args:
        trainer: the trainer engine; MONAI's ``CheckpointLoader`` is attached to its STARTED event.
        ckpt_dir: where the trainer saved ``checkpoint_epoch=N.pt`` and the best ``model.pt``.
        resume: when False, epoch checkpoints of an earlier run are deleted instead, so a later
            ``--resume`` cannot pick up a stale one from another run.
        load_dict: the objects saved in the epoch checkpoint (model, optimizer, trainer, ...).
        best_saver: the validator's key-metric ``CheckpointSaver``; it learns the best metric so far
            from ``training_summary.json``.
        map_location: device for the loaded tensors.

    A resume request with no checkpoint starts from scratch with a warning, so a job script can
    always pass ``--resume true``. ``max_epochs`` is the new run's, so resuming can extend training.

    Under ``torchrun`` every rank loads the checkpoint itself, so all of them must find the same
    one: on several nodes ``ckpt_dir`` has to be a directory they share (only global rank 0
    writes there). Ranks that disagree stop here with a ``RuntimeError`` rather than train
    different epochs and hang in the next collective.
    """
    folder = Path(ckpt_dir)
    path = last_checkpoint(folder)
    if not as_flag(resume, "resume"):
        if path is not None and is_main_process():
            stale = [p for p in folder.iterdir() if _EPOCH_FILE.search(p.name)]
            logger.info("fresh training: removing %d epoch checkpoint(s) of an earlier run in %s", len(stale), folder)
            for p in stale:
                p.unlink()
        return None
    _same_checkpoint_on_every_rank(path, folder)
    if path is None:
        logger.warning("--resume: no checkpoint_epoch=N.pt in %s, training from the start", folder)
        return None
    logger.info("resuming from %s", path)
    CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=map_location).attach(trainer)
    best = read_training_summary(folder).get("best_metric")
    if best_saver is not None and best is not None and (folder / BEST_MODEL_FILE).is_file():
        # the saver's tracking list, so a worse epoch after the restart does not replace model.pt
        best_saver.load_state_dict({"_saved": [(float(best), BEST_MODEL_FILE)]})
    return path


def _same_checkpoint_on_every_rank(path: Path | None, folder: Path) -> None:
    """Raise on every rank when the ranks of a process group found different epoch checkpoints."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    found: list = [None] * dist.get_world_size()
    dist.all_gather_object(found, path.name if path is not None else None)
    if len(set(found)) > 1:
        seen = ", ".join(f"rank {r}: {name or 'none'}" for r, name in enumerate(found))
        raise RuntimeError(f"--resume: the ranks found different epoch checkpoints in {folder} ({seen}); "
                           "on several nodes --ckpt_dir must be a directory every node shares")
