"""What a training run cost and reached, beside its checkpoint.

The papers compare models by accuracy *and* by training time and storage (Patel et al. report
both), so ``mura-monai compare`` needs them for every bundle. The trainer writes
``<ckpt_dir>/training_summary.json`` after every epoch (a killed run still leaves one), adding
the time of earlier runs when the training was resumed; evaluation copies it into metrics.json.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

__all__ = ["SUMMARY_FILE", "TrainingSummaryWriter", "read_training_summary", "model_size"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"


def read_training_summary(ckpt_dir: str | Path) -> dict:
    """The recorded summary, or ``{}`` for a checkpoint trained elsewhere."""
    path = Path(ckpt_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def model_size(network: nn.Module) -> dict:
    """Parameter counts and the float32 size a state dict of this network takes."""
    params = list(network.parameters())
    n_bytes = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    return {
        "n_parameters": int(sum(p.numel() for p in params)),
        "n_trainable_parameters": int(sum(p.numel() for p in params if p.requires_grad)),
        "model_size_mb": round(n_bytes / 2**20, 2),
    }


class TrainingSummaryWriter:
    """Ignite handler for the trainer: wall time, epochs and the validator's best metric.

    Args:
        ckpt_dir: folder of the checkpoints; the summary is written there.
        network: the trained network (for its size).
        validator: the evaluator whose ``state.best_metric`` is the key metric's best value.
        extra: fields copied into the summary (bundle name, image size, batch size...).
    """

    def __init__(self, ckpt_dir: str | Path, network: nn.Module, validator: Engine | None = None,
                 extra: dict | None = None) -> None:
        self.path = Path(ckpt_dir) / SUMMARY_FILE
        self.network = network
        self.validator = validator
        self.extra = dict(extra or {})
        self._started = 0.0
        self._earlier_s = 0.0
        self._earlier_best: tuple[float, int] | None = None
        self._checked = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _start(self, engine: Engine) -> None:
        self._started = time.perf_counter()
        self._earlier_s, self._earlier_best, self._checked = 0.0, None, False

    def _check_resumed(self, engine: Engine) -> None:
        """A first completed epoch beyond 1 means a checkpoint was restored: add the earlier runs'."""
        self._checked = True
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if engine.state.epoch > 1 and previous.get("epochs_completed") == engine.state.epoch - 1:
            self._earlier_s = float(previous.get("train_time_s", 0.0))
            if previous.get("best_metric") is not None:  # the validator's own record restarts with the run
                self._earlier_best = (float(previous["best_metric"]), int(previous["best_metric_epoch"]))

    def write(self, engine: Engine) -> dict:
        if not self._checked:
            self._check_resumed(engine)
        summary = {
            "epochs_completed": int(engine.state.epoch),
            "max_epochs": int(engine.state.max_epochs or 0),
            "iterations": int(engine.state.iteration),
            "train_time_s": round(self._earlier_s + time.perf_counter() - self._started, 2),
        }
        candidates = [self._earlier_best] if self._earlier_best else []
        state = self.validator.state if self.validator is not None else None
        if state is not None and getattr(state, "best_metric_epoch", -1) >= 0:
            candidates.append((float(state.best_metric), int(state.best_metric_epoch)))
        if candidates:
            best = max(candidates, key=lambda c: c[0])
            summary |= {"best_metric": best[0], "best_metric_epoch": best[1]}
        summary |= model_size(self.network) | self.extra
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(self.path)
        return summary
