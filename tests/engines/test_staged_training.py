"""StagedTraining drives a real MONAI trainer through the attention-guided CNN's stages."""
from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from mura_monai.engines import StagedTraining
from mura_monai.networks.agcnn import STAGES, AttentionGuidedCNN


def _trainer(net, epochs):
    torch.manual_seed(0)
    data = [{"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([[0.0], [1.0], [0.0], [1.0]])}] * 2
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net,
                             optimizer=optimizer, loss_function=torch.nn.BCEWithLogitsLoss()), optimizer


def _validator(metric_by_run):
    """A real Ignite engine standing for the evaluator: its key metric comes from a list."""
    validator = Engine(lambda engine, batch: None)

    @validator.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_study_auc"] = metric_by_run.pop(0)
    validator.state.best_metric, validator.state.best_metric_epoch = -1, -1
    return validator


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_each_epoch_trains_only_its_stage_and_the_plan_is_recorded(tmp_path):
    net = AttentionGuidedCNN(in_channels=1, stage="global")
    trainer, _ = _trainer(net, epochs=3)
    validator = _validator([0.5, 0.6, 0.7])
    staged = StagedTraining(net, {"fusion": 1, "global": 1, "local": 1}, validator, ckpt_dir=tmp_path, order=STAGES)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))  # as ValidationHandler, first
    seen = []
    parts = {"global": net.global_branch, "local": net.local_branch, "fusion": net.fusion}

    @trainer.on(Events.EPOCH_STARTED)
    def _before(engine):
        engine.state.before = {name: _snapshot(m) for name, m in parts.items()}

    @trainer.on(Events.EPOCH_COMPLETED)
    def _after(engine):
        seen.append({name: _changed(engine.state.before[name], _snapshot(m)) for name, m in parts.items()})

    staged.attach(trainer)  # after the measurement: a stage's start initialises the next stage's part
    trainer.run()
    # the paper's order, whatever order the dict came in; in each epoch only that stage's part changed
    # (the frozen branches' BatchNorm statistics included)
    assert seen == [{"global": True, "local": False, "fusion": False},
                    {"global": False, "local": True, "fusion": False},
                    {"global": False, "local": False, "fusion": True}]
    doc = json.loads((tmp_path / "stages.json").read_text())
    assert [s["stage"] for s in doc["stages"]] == ["global", "local", "fusion"]
    assert [s["best_metric"] for s in doc["stages"]] == [0.5, 0.6, 0.7]


def test_a_stalled_stage_ends_early_and_the_next_starts_from_its_best_epoch():
    net = AttentionGuidedCNN(in_channels=1, stage="global")
    trainer, optimizer = _trainer(net, epochs=6)
    lr_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=0)
    validator = _validator([0.9, 0.4, 0.3, 0.5, 0.5, 0.5])
    staged = StagedTraining(net, {"global": 5, "local": 1}, validator, patience=2, lr_scheduler=lr_scheduler)
    best = {}

    @validator.on(Events.EPOCH_COMPLETED)
    def _keep(engine):
        if engine.state.metrics["val_study_auc"] == 0.9:
            best["global"] = _snapshot(net.global_branch)
        lr_scheduler.step(engine.state.metrics["val_study_auc"])

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))  # as ValidationHandler, first
    staged.attach(trainer)
    trainer.run()
    global_stage, local_stage = staged.history
    assert (global_stage["last_epoch"], global_stage["ended_by"], global_stage["best_epoch"]) == (3, "patience", 1)
    assert local_stage["first_epoch"] == 4 and trainer.state.epoch == 4  # then the last stage ended the run
    assert not _changed(best["global"], _snapshot(net.global_branch))  # epoch 1's global weights came back
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)  # the plateau schedule restarted


def test_resume_continues_in_the_saved_stage():
    net = AttentionGuidedCNN(in_channels=1, stage="global")
    staged = StagedTraining(net, {"global": 2, "local": 2, "fusion": 2}, Engine(lambda e, b: None))
    staged.load_state_dict({"index": 1, "start_epoch": 3, "history": [{"stage": "global"}, {"stage": "local"}]})
    assert staged.stage == "local" and staged.history == [{"stage": "global"}]
    with pytest.raises(ValueError, match="unknown stage"):
        StagedTraining(net, {"globl": 1}, Engine(lambda e, b: None), order=STAGES)


def test_a_skipped_stage_still_initialises_what_the_next_stage_reads():
    # --stage_epochs "{'global': 1, 'local': 0, 'fusion': 1}" used to train the fusion layer on a
    # local branch at its random initialisation: the local stage's start (a copy of the trained
    # global branch, local_init="global") was skipped with its epochs
    net = AttentionGuidedCNN(in_channels=1, stage="global")
    trainer, _ = _trainer(net, epochs=2)
    validator = _validator([0.5, 0.6])
    staged = StagedTraining(net, {"global": 1, "local": 0, "fusion": 1}, validator, order=STAGES)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))  # as ValidationHandler, first
    staged.attach(trainer)
    trainer.run()
    assert [s["stage"] for s in staged.history] == ["global", "fusion"]
    assert not _changed(_snapshot(net.global_branch), _snapshot(net.local_branch))
