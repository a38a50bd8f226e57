"""training_summary.json: written every epoch, carried over a resumed run."""
from __future__ import annotations

import json

from ignite.engine import Engine, Events
from torch import nn

from mura_monai.engines.training_summary import SUMMARY_FILE, TrainingSummaryWriter, model_size, read_training_summary

_DATA = [0, 1, 2, 3]  # 4 iterations per epoch


def _engine() -> Engine:
    return Engine(lambda engine, batch: batch)


def _validator(best_metric: float | None = None, best_epoch: int = -1) -> Engine:
    """Stands in for MONAI's evaluator: only ``state.best_metric`` / ``best_metric_epoch`` are read."""
    validator = _engine()
    validator.state.best_metric = -1.0 if best_metric is None else best_metric
    validator.state.best_metric_epoch = best_epoch
    return validator


def _resumed_engine(epoch: int, max_epochs: int) -> Engine:
    """A trainer as CheckpointLoader leaves it: ``epoch`` epochs done, ``max_epochs`` to go to."""
    engine = _engine()
    engine.load_state_dict({"epoch": epoch, "max_epochs": max_epochs, "epoch_length": len(_DATA)})
    return engine


def test_model_size_counts_parameters_exactly():
    net = nn.Linear(3, 2)
    assert model_size(net) == {"n_parameters": 8, "n_trainable_parameters": 8, "model_size_mb": 0.0}
    net.bias.requires_grad_(False)
    assert model_size(net)["n_trainable_parameters"] == 6
    big = nn.Linear(1024, 256)  # (1024*256 + 256) float32 = 1.0 MB + 1 KB
    assert model_size(big)["model_size_mb"] == 1.0
    assert model_size(nn.BatchNorm1d(4))["n_parameters"] == 8  # buffers are not parameters


def test_summary_written_after_every_epoch(tmp_path):
    trainer = _engine()
    writer = TrainingSummaryWriter(tmp_path / "ckpt", nn.Linear(3, 2), extra={"bundle": "tiny", "image_size": 32})
    writer.attach(trainer)
    seen = []

    @trainer.on(Events.EPOCH_COMPLETED)  # after the writer's own handler
    def _read(engine):
        seen.append(read_training_summary(tmp_path / "ckpt"))

    trainer.run(_DATA, max_epochs=3)
    assert [s["epochs_completed"] for s in seen] == [1, 2, 3]
    assert [s["iterations"] for s in seen] == [4, 8, 12]
    assert all(s["max_epochs"] == 3 for s in seen)
    assert all(s["n_parameters"] == 8 and s["n_trainable_parameters"] == 8 for s in seen)
    assert all(s["bundle"] == "tiny" and s["image_size"] == 32 for s in seen)
    times = [s["train_time_s"] for s in seen]
    assert all(t >= 0 for t in times) and times == sorted(times)
    assert "best_metric" not in seen[-1]  # no validator
    assert not (tmp_path / "ckpt" / "training_summary.tmp").exists()


def test_best_metric_comes_from_the_validator(tmp_path):
    validator = _validator()
    trainer = _engine()
    TrainingSummaryWriter(tmp_path, nn.Linear(3, 2), validator=validator).attach(trainer)

    @trainer.on(Events.EPOCH_COMPLETED(once=1))  # the validation of epoch 1 runs before the writer in a bundle;
    def _validated(engine):                      # here it sets the state just after, for epoch 2's summary
        validator.state.best_metric, validator.state.best_metric_epoch = 0.75, 1

    trainer.run(_DATA, max_epochs=2)
    summary = read_training_summary(tmp_path)
    assert summary["best_metric"] == 0.75 and summary["best_metric_epoch"] == 1


def test_resumed_run_adds_earlier_time_and_keeps_a_better_earlier_best(tmp_path):
    previous = {"epochs_completed": 2, "iterations": 8, "train_time_s": 100.0, "best_metric": 0.9, "best_metric_epoch": 2}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(previous))
    trainer = _resumed_engine(epoch=2, max_epochs=4)
    validator = _validator(best_metric=0.6, best_epoch=3)  # the restarted validator's own record is worse
    TrainingSummaryWriter(tmp_path, nn.Linear(3, 2), validator=validator).attach(trainer)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(read_training_summary(tmp_path)))
    trainer.run(_DATA)
    assert [s["epochs_completed"] for s in epochs] == [3, 4]
    assert [s["iterations"] for s in epochs] == [12, 16]
    for summary in epochs:
        assert 100.0 <= summary["train_time_s"] < 160.0
        assert summary["best_metric"] == 0.9 and summary["best_metric_epoch"] == 2


def test_resumed_run_takes_a_better_new_best(tmp_path):
    previous = {"epochs_completed": 2, "train_time_s": 50.0, "best_metric": 0.7, "best_metric_epoch": 1}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(previous))
    trainer = _resumed_engine(epoch=2, max_epochs=3)
    TrainingSummaryWriter(tmp_path, nn.Linear(3, 2), validator=_validator(0.8, 3)).attach(trainer)
    trainer.run(_DATA)
    summary = read_training_summary(tmp_path)
    assert summary["best_metric"] == 0.8 and summary["best_metric_epoch"] == 3
    assert summary["train_time_s"] >= 50.0


def test_fresh_run_ignores_an_old_summary(tmp_path):
    old = {"epochs_completed": 7, "train_time_s": 1000.0, "best_metric": 0.99, "best_metric_epoch": 5}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(old))
    trainer = _engine()
    TrainingSummaryWriter(tmp_path, nn.Linear(3, 2), validator=_validator()).attach(trainer)
    trainer.run(_DATA, max_epochs=2)
    summary = read_training_summary(tmp_path)
    assert summary["epochs_completed"] == 2 and summary["train_time_s"] < 60.0
    assert "best_metric" not in summary


def test_resume_from_a_checkpoint_older_than_the_summary_does_not_add_its_time(tmp_path):
    """A summary of epoch 5 beside a run restarted from epoch 2 does not describe this run's past."""
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"epochs_completed": 5, "train_time_s": 500.0}))
    trainer = _resumed_engine(epoch=2, max_epochs=3)
    TrainingSummaryWriter(tmp_path, nn.Linear(3, 2)).attach(trainer)
    trainer.run(_DATA)
    assert read_training_summary(tmp_path)["train_time_s"] < 60.0


def test_read_training_summary_of_a_folder_without_one(tmp_path):
    assert read_training_summary(tmp_path) == {}
    assert read_training_summary(tmp_path / "missing") == {}
