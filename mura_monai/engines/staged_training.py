"""Training in stages with one MONAI trainer: the attention-guided CNN's global, local, fusion.

Guan et al. train the global branch, then the local branch with the global one fixed, then the
fusion layer with both fixed, each stage starting from the best weights of the one before. One
``SupervisedTrainer`` runs all of it: this handler switches the network's stage (which selects
its output and its trainable weights), and at each switch restores the stage's best weights and
restarts what measures "best" — the validator's best metric, the best-model ``CheckpointSaver``,
the plateau LR schedule and its learning rate — so ``models/model.pt`` ends as the best epoch
of the last stage, and early stopping ends a stage (and the last stage ends training) instead of
ending the run at the first plateau.

Its ``state_dict`` goes into the epoch checkpoints, so ``--resume`` continues in the right stage.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from mura_monai.engines.distributed import is_main_process

__all__ = ["StagedTraining", "STAGES_FILE", "scale_stages"]

logger = logging.getLogger(__name__)
STAGES_FILE = "stages.json"


def _module(network: torch.nn.Module) -> torch.nn.Module:
    return getattr(network, "module", network)  # DistributedDataParallel wraps the staged network


def scale_stages(plan: list[tuple[str, int]], max_epochs: int) -> list[tuple[str, int]]:
    """``plan``'s epochs scaled to sum to ``max_epochs`` (largest remainders, at least 1 each)."""
    if max_epochs < len(plan):
        raise ValueError(f"max_epochs {max_epochs} is fewer than the {len(plan)} stages "
                         f"({', '.join(s for s, _ in plan)}); give at least {len(plan)} or set --stage_epochs")
    total = sum(n for _, n in plan)
    spare = max_epochs - len(plan)  # one epoch each first, the rest in proportion
    shares = [spare * n / total for _, n in plan]
    counts = [1 + int(share) for share in shares]
    by_remainder = sorted(range(len(plan)), key=lambda i: (-(shares[i] - int(shares[i])), i))
    for i in by_remainder[: max_epochs - sum(counts)]:
        counts[i] += 1
    return [(stage, n) for (stage, _), n in zip(plan, counts)]


class StagedTraining:
    """Ignite handler for the trainer.

    Args:
        network: a network with ``set_stage(name)`` and ``stage`` (possibly DDP-wrapped).
        stage_epochs: ``{stage: epochs}``; a stage with 0 epochs is skipped.
        order: the stages in training order (a dict from the command line may come sorted by
            name); default: ``stage_epochs``'s own order.
        validator: the evaluator run by ``ValidationHandler`` each epoch.
        key_metric: the validator's metric that decides the best epoch of a stage.
        patience: validations without improvement that end a stage early (0: never).
        best_model_saver: MONAI ``CheckpointSaver`` keeping the best model; restarted per stage.
        lr_scheduler: ``ReduceLROnPlateau`` driven by the key metric; restarted per stage with
            the optimizer's initial learning rates.
        ckpt_dir: where ``stages.json`` (each stage's epochs and best metric) is written.
        max_epochs: the trainer's epoch budget. When it differs from the stages' sum (the user
            set ``--max_epochs``), the stages are scaled to it in their own proportions, each
            keeping at least one epoch: cutting the run at the budget instead would end it
            inside an early stage and leave a model whose last stage never trained.
    """

    def __init__(self, network: torch.nn.Module, stage_epochs: dict, validator: Engine,
                 key_metric: str = "val_study_auc", patience: int = 0, best_model_saver=None, lr_scheduler=None,
                 ckpt_dir: str | Path | None = None, order=None, max_epochs: int | None = None) -> None:
        self.network = network
        stage_epochs = dict(stage_epochs)
        unknown = set(stage_epochs) - set(order or stage_epochs)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {list(order)}")
        self.order = [str(s) for s in (order or stage_epochs)]
        self.plan = [(s, int(stage_epochs[s])) for s in self.order if int(stage_epochs.get(s, 0)) > 0]
        if not self.plan:
            raise ValueError(f"no stage has epochs to train: {stage_epochs}")
        if max_epochs is not None and int(max_epochs) != self.total_epochs:
            self.plan = scale_stages(self.plan, int(max_epochs))
            logger.info("max_epochs %d spread over the stages as %s (--stage_epochs sets each stage)", int(max_epochs),
                        ", ".join(f"{s} {n}" for s, n in self.plan))
        self.validator = validator
        self.key_metric = key_metric
        self.patience = int(patience)
        self.best_model_saver = best_model_saver
        self.lr_scheduler = lr_scheduler
        self.initial_lrs = [g["lr"] for g in lr_scheduler.optimizer.param_groups] if lr_scheduler is not None else []
        self.path = Path(ckpt_dir) / STAGES_FILE if ckpt_dir else None
        self.index, self.start_epoch, self.best, self.bad = 0, 1, None, 0
        self.history: list[dict] = []
        self._best_state: dict | None = None
        self._epoch = 0

    @property
    def total_epochs(self) -> int:
        return sum(n for _, n in self.plan)

    @property
    def stage(self) -> str:
        return self.plan[self.index][0]

    def attach(self, engine: Engine) -> None:
        """Attach after the ``ValidationHandler``: a stage's end is decided on its last validation."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._enter_stage)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end_of_epoch)
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record)

    def _enter_stage(self, engine: Engine) -> None:
        self._epoch = int(engine.state.epoch)
        module = _module(self.network)
        if module.stage != self.stage:
            module.set_stage(self.stage)
            logger.info("stage %s from epoch %d (%d epochs at most)", self.stage, engine.state.epoch, self.plan[self.index][1])

    def _record(self, validator: Engine) -> None:
        metric = float(validator.state.metrics[self.key_metric])
        if self.best is None or metric > self.best[0]:
            self.best, self.bad = (metric, self._epoch), 0
            self._best_state = {k: v.detach().cpu().clone() for k, v in _module(self.network).state_dict().items()}
        else:
            self.bad += 1

    def _end_of_epoch(self, engine: Engine) -> None:
        done = engine.state.epoch - self.start_epoch + 1 >= self.plan[self.index][1]
        stalled = self.patience > 0 and self.bad >= self.patience
        if not (done or stalled):
            return
        self.history.append({
            "stage": self.stage, "first_epoch": self.start_epoch, "last_epoch": int(engine.state.epoch),
            "best_metric": self.best[0] if self.best else None, "best_epoch": self.best[1] if self.best else None,
            "ended_by": "epochs" if done else "patience",
        })
        if self.index + 1 == len(self.plan):
            self._write()
            engine.terminate()
            return
        if self._best_state is not None:  # the next stage builds on this stage's best epoch
            _module(self.network).load_state_dict(self._best_state)
        previous = self.stage
        self.index, self.start_epoch = self.index + 1, int(engine.state.epoch) + 1
        start = getattr(_module(self.network), "start_stage", None)
        if start is not None:  # e.g. the fusion layer starts from the branches' classifiers
            # a stage given 0 epochs still initialises what it would have trained: skipping the
            # local stage must leave the fusion layer a copy of the global branch to read, not a
            # branch at its random initialisation
            for stage in self.order[self.order.index(previous) + 1 : self.order.index(self.stage) + 1]:
                start(stage)
        self._restart_trackers()
        self._write()

    def _restart_trackers(self) -> None:
        self.best, self.bad, self._best_state = None, 0, None
        self.validator.state.best_metric, self.validator.state.best_metric_epoch = -1, -1
        checkpoint = getattr(self.best_model_saver, "_key_metric_checkpoint", None)
        if checkpoint is not None:
            checkpoint.reset()  # model.pt is overwritten by the new stage's first validation
        if self.lr_scheduler is not None:
            for group, lr in zip(self.lr_scheduler.optimizer.param_groups, self.initial_lrs):
                group["lr"] = lr
            self.lr_scheduler._reset()

    def _write(self) -> None:
        if self.path is None or not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"plan": dict(self.plan), "stages": self.history}, indent=2))

    def state_dict(self) -> dict:
        return {"index": self.index, "start_epoch": self.start_epoch, "history": copy.deepcopy(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.index, self.start_epoch = int(state["index"]), int(state["start_epoch"])
        # a stage cut short by the end of the earlier run is continued, not listed twice
        self.history = list(state.get("history", []))[: self.index]
        self.best, self.bad, self._best_state = None, 0, None
