"""StudyAUC and MetricsReportWriter inside a real MONAI SupervisedEvaluator."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from sklearn.metrics import roc_auc_score

from mura_monai.engines import LabelAndBodyPart, MetricsReportWriter, StudyAUC
from mura_monai.losses import BodyPartWeightedBCELoss


class MeanLogit(torch.nn.Module):
    """Logit = 4·(mean intensity − 0.5): a network whose outputs the test can predict."""

    def forward(self, x):
        return 4 * (x.mean(dim=(1, 2, 3)) - 0.5).unsqueeze(1)


def _data():
    rng = np.random.default_rng(0)
    items = []
    for s in range(10):
        label = s % 2
        for view in range(1 + s % 3):
            level = float(rng.uniform(0.2, 0.8))
            items.append({
                "image": torch.full((1, 8, 8), level), "label": label, "study": f"study{s}",
                "body_part": "XR_HAND" if s < 5 else "XR_WRIST", "body_part_index": 3 if s < 5 else 6,
                "path": f"/x/study{s}/image{view}.png", "level": level,
            })
    return items


def _expected_study_auc(items):
    probs = {}
    for it in items:
        probs.setdefault(it["study"], (it["label"], []))[1].append(1 / (1 + np.exp(-4 * (it["level"] - 0.5))))
    labels = [v[0] for v in probs.values()]
    return roc_auc_score(labels, [np.mean(v[1]) for v in probs.values()])


@pytest.mark.parametrize("decollate", [False, True])
def test_study_auc_matches_sklearn_on_mean_aggregated_studies(decollate, tmp_path):
    items = _data()
    writer = MetricsReportWriter(tmp_path, n_bootstrap=20)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(items), batch_size=4),
        network=MeanLogit(), key_val_metric={"val_study_auc": StudyAUC()}, val_handlers=[writer], decollate=decollate,
    )
    evaluator.run()
    expected = _expected_study_auc(items)
    assert evaluator.state.metrics["val_study_auc"] == pytest.approx(expected)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["study"]["auc"] == pytest.approx(expected)
    assert doc["n_images"] == len(items) and doc["n_studies"] == 10
    assert set(doc["per_body_part"]) == {"XR_HAND", "XR_WRIST"}
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert predictions["images"][0]["path"] == "/x/study0/image0.png"


def test_trainer_feeds_body_part_to_the_weighted_loss():
    items = _data()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    seen = []

    class Spy(BodyPartWeightedBCELoss):
        def forward(self, logits, target):
            seen.append(target.clone())
            return super().forward(logits, target)

    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=DataLoader(Dataset(items), batch_size=5),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=Spy([[0.5, 0.5]] * 7),
        prepare_batch=LabelAndBodyPart(),
    )
    trainer.run()
    targets = torch.cat(seen)
    assert targets.shape == (len(items), 2)
    assert targets[:, 1].tolist() == [float(it["body_part_index"]) for it in items]
    assert targets[:, 0].tolist() == [float(it["label"]) for it in items]
