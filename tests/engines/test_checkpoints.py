"""Resuming from ``checkpoint_epoch=N.pt`` with a real Ignite trainer and MONAI's CheckpointSaver."""
from __future__ import annotations

import json
import logging

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from torch import nn

from mura_monai.engines.checkpoints import BEST_MODEL_FILE, attach_resume, last_checkpoint
from mura_monai.engines.training_summary import SUMMARY_FILE

_DATA = [torch.full((2, 3), float(i)) for i in range(3)]  # 3 iterations per epoch


def _trainer(net: nn.Module, optimizer: torch.optim.Optimizer, max_epochs: int) -> Engine:
    def step(engine, x):
        optimizer.zero_grad()
        loss = (net(x) - 1.0).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    engine = Engine(step)
    engine.state.max_epochs = max_epochs  # what a fresh run is told; run() keeps it
    return engine


def _parts(seed: int):
    torch.manual_seed(seed)
    net = nn.Linear(3, 1)
    return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)


def _train_and_checkpoint(folder, epochs: int) -> tuple[dict, dict]:
    """A first run saving every epoch, as the bundles' ``epoch_checkpoint``; returns its final weights and optimizer state."""
    net, opt = _parts(0)
    trainer = _trainer(net, opt, epochs)
    CheckpointSaver(str(folder), {"model": net, "optimizer": opt, "trainer": trainer},
                    save_interval=1, n_saved=1).attach(trainer)
    trainer.run(_DATA, max_epochs=epochs)
    return ({k: v.clone() for k, v in net.state_dict().items()},
            {i: s["momentum_buffer"].clone() for i, s in enumerate(opt.state.values())})


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_last_checkpoint_picks_the_largest_epoch_numerically(tmp_path):
    _touch(tmp_path, "checkpoint_epoch=9.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=2.pt",
           "checkpoint_epoch=11.pt.tmp", "checkpoint_final_iteration=500.pt", "model.pt", "checkpoint_key_metric=0.9.pt")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"
    assert last_checkpoint(str(tmp_path)) == tmp_path / "checkpoint_epoch=10.pt"


def test_last_checkpoint_none_without_epoch_files(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    assert last_checkpoint(tmp_path) is None
    _touch(tmp_path, "model.pt")
    assert last_checkpoint(tmp_path) is None


def test_fresh_run_deletes_stale_epoch_checkpoints(tmp_path):
    _touch(tmp_path, "checkpoint_epoch=1.pt", "checkpoint_epoch=3.pt", BEST_MODEL_FILE, SUMMARY_FILE, "notes.txt")
    net, opt = _parts(0)
    trainer = _trainer(net, opt, 1)
    assert attach_resume(trainer, tmp_path, False, {"model": net, "optimizer": opt, "trainer": trainer}) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BEST_MODEL_FILE, SUMMARY_FILE, "notes.txt"])
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    trainer.run(_DATA, max_epochs=2)
    assert epochs == [1, 2]  # nothing was loaded


def test_fresh_run_in_a_missing_folder(tmp_path):
    net, opt = _parts(0)
    trainer = _trainer(net, opt, 1)
    assert attach_resume(trainer, tmp_path / "new", False, {"model": net}) is None
    assert not (tmp_path / "new").exists()


def test_resume_without_checkpoint_warns_and_starts_over(tmp_path, caplog):
    _touch(tmp_path, BEST_MODEL_FILE)
    net, opt = _parts(0)
    trainer = _trainer(net, opt, 2)
    with caplog.at_level(logging.WARNING, logger="mura_monai.engines.checkpoints"):
        assert attach_resume(trainer, tmp_path, True, {"model": net, "optimizer": opt, "trainer": trainer}) is None
    assert any(r.levelno == logging.WARNING and "no checkpoint_epoch" in r.getMessage() for r in caplog.records)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    trainer.run(_DATA, max_epochs=2)
    assert epochs == [1, 2]


def test_resume_continues_from_the_saved_epoch(tmp_path):
    saved_weights, saved_momentum = _train_and_checkpoint(tmp_path, epochs=2)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=2.pt"

    net, opt = _parts(1)  # another initialisation, no optimizer state
    assert not torch.equal(net.weight, saved_weights["weight"])
    trainer = _trainer(net, opt, 3)
    path = attach_resume(trainer, tmp_path, True, {"model": net, "optimizer": opt, "trainer": trainer},
                         map_location="cpu")
    assert path == tmp_path / "checkpoint_epoch=2.pt"

    at_start, epochs, iterations = {}, [], []

    @trainer.on(Events.EPOCH_STARTED)
    def _first_epoch(engine):
        if not at_start:
            at_start["weights"] = {k: v.clone() for k, v in net.state_dict().items()}
            at_start["momentum"] = {i: s["momentum_buffer"].clone() for i, s in enumerate(opt.state.values())}
        epochs.append(engine.state.epoch)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iterations.append(e.state.iteration))
    trainer.run(_DATA, max_epochs=3)
    assert epochs == [3]  # exactly one more epoch
    assert iterations == [7, 8, 9]
    assert trainer.state.epoch == 3
    for key, value in saved_weights.items():
        assert torch.equal(at_start["weights"][key], value), key
    assert len(at_start["momentum"]) == len(saved_momentum) == 2
    for i, value in saved_momentum.items():
        assert torch.equal(at_start["momentum"][i], value)


def test_resume_with_a_larger_max_epochs_extends_training(tmp_path):
    _train_and_checkpoint(tmp_path, epochs=2)
    net, opt = _parts(1)
    trainer = _trainer(net, opt, 5)
    attach_resume(trainer, tmp_path, True, {"model": net, "optimizer": opt, "trainer": trainer})
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    trainer.run(_DATA, max_epochs=5)
    assert epochs == [3, 4, 5]


def _best_saver_folder(tmp_path, best_metric: float | None):
    """An earlier run's folder: an epoch checkpoint, its best model.pt (all weights 7) and the summary."""
    _train_and_checkpoint(tmp_path, epochs=1)
    best = nn.Linear(3, 1)
    nn.init.constant_(best.weight, 7.0)
    nn.init.constant_(best.bias, 7.0)
    torch.save(best.state_dict(), tmp_path / BEST_MODEL_FILE)
    summary = {"epochs_completed": 1, "train_time_s": 3.0}
    if best_metric is not None:
        summary |= {"best_metric": best_metric, "best_metric_epoch": 1}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))


def _validate(best_saver: CheckpointSaver, metric: float) -> None:
    """A tiny evaluator-like engine that reports ``metric`` as its key metric at the end of its epoch."""
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metrics(engine):  # registered before the saver, as Ignite metrics are
        engine.state.metrics = {"val_auc": metric}
        engine.state.key_metric_name = "val_auc"

    best_saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)


def _resumed_best_saver(tmp_path, best_metric: float | None) -> tuple[nn.Module, CheckpointSaver]:
    _best_saver_folder(tmp_path, best_metric)
    net, opt = _parts(2)  # weights far from 7
    trainer = _trainer(net, opt, 3)
    best_saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename=BEST_MODEL_FILE)
    assert attach_resume(trainer, tmp_path, True, {"model": net, "optimizer": opt, "trainer": trainer}, best_saver) is not None
    return net, best_saver


def _best_weights(tmp_path) -> torch.Tensor:
    return torch.load(tmp_path / BEST_MODEL_FILE, map_location="cpu", weights_only=True)["weight"]


def test_restored_best_metric_keeps_a_worse_epoch_from_overwriting_model_pt(tmp_path):
    _, best_saver = _resumed_best_saver(tmp_path, best_metric=0.9)
    _validate(best_saver, 0.5)
    assert torch.equal(_best_weights(tmp_path), torch.full((1, 3), 7.0))


def test_a_better_epoch_after_resume_replaces_model_pt(tmp_path):
    net, best_saver = _resumed_best_saver(tmp_path, best_metric=0.9)
    _validate(best_saver, 0.95)
    assert torch.equal(_best_weights(tmp_path), net.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir() if "key_metric" in p.name) == []  # still one fixed file


def test_without_a_recorded_best_metric_the_saver_starts_over(tmp_path):
    """Control for the two tests above: with nothing restored, the worse metric does overwrite model.pt."""
    net, best_saver = _resumed_best_saver(tmp_path, best_metric=None)
    _validate(best_saver, 0.5)
    assert torch.equal(_best_weights(tmp_path), net.weight.detach())
