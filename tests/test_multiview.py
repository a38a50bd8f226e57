"""View fusion: each rule computed as defined, the learned rule fitted and scored out of fold."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mura_monai.cli import VIEW_FUSION_CHOICES
from mura_monai.multiview import (
    VIEW_FUSIONS,
    LearnedViewFusion,
    capture_features,
    compare_view_fusions,
    fuse_study,
    last_linear,
)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_cli_choices_are_the_library_rules():
    assert tuple(VIEW_FUSION_CHOICES) == VIEW_FUSIONS


def test_late_rules():
    p = [0.2, 0.9, 0.4]
    assert fuse_study("mean", p) == pytest.approx(0.5)
    assert fuse_study("max", p) == pytest.approx(0.9)
    assert fuse_study("median", p) == pytest.approx(0.4)
    logits = np.log(np.array(p) / (1 - np.array(p)))
    learned = LearnedViewFusion(weights=[2.0, 0.5, -1.0], bias=0.3)
    expected = _sigmoid(2.0 * logits.max() + 0.5 * logits.mean() - 1.0 * logits.min() + 0.3)
    assert fuse_study("learned", p, learned=learned) == pytest.approx(expected)
    with pytest.raises(ValueError, match="fitted weights"):
        fuse_study("learned", p)
    with pytest.raises(ValueError, match="view fusion must be one of"):
        fuse_study("vote", p)


def test_early_rules_pool_features_before_the_classifier():
    head = nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -2.0]]))
        head.bias.fill_(0.5)
    features = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert fuse_study("early_mean", [0.5, 0.5], features, head) == pytest.approx(_sigmoid(2.0 - 1.0 + 0.5))
    assert fuse_study("early_max", [0.5, 0.5], features, head) == pytest.approx(_sigmoid(3.0 - 2.0 + 0.5))


def test_capture_features_reads_the_last_linear_input_and_leaves_no_hook():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    seen: list = []
    x = torch.randn(5, 1, 2, 2)
    with capture_features(net, seen) as head:
        net(x)
    assert head is net[3] and last_linear(net) is net[3]
    assert torch.allclose(seen[0], torch.relu(net[1](x.flatten(1))))
    net(x)
    assert len(seen) == 1 and not net[3]._forward_pre_hooks
    with pytest.raises(ValueError, match="no linear"):
        last_linear(nn.Conv2d(1, 1, 1))


def _records(n_studies=80, seed=0):
    """Studies whose abnormal ones have ONE clearly abnormal view among normal-looking others."""
    rng = np.random.default_rng(seed)
    records = []
    for s in range(n_studies):
        label = int(s % 2)
        views = int(rng.integers(2, 5))
        logits = rng.normal(-1.0, 0.6, views)
        if label:
            logits[rng.integers(views)] += 3.0
        for v, z in enumerate(logits):
            records.append({"study": f"MURA-v1.1/valid/XR_HAND/patient{s:05d}/study1", "label": label,
                            "probability": float(_sigmoid(z)), "path": f"{s}/{v}.png"})
    return records


def test_learned_rule_finds_that_one_abnormal_view_decides_and_is_scored_out_of_fold(tmp_path):
    records = _records()
    features = torch.randn(len(records), 3)
    doc = compare_view_fusions(records, features, nn.Linear(3, 1), n_bootstrap=20)
    methods = doc["methods"]
    assert set(methods) == set(VIEW_FUSIONS) and doc["n_studies"] == 80
    assert methods["learned"]["scored"] == "out of fold"
    assert methods["max"]["auc"] > methods["mean"]["auc"]  # the data were made so
    assert methods["learned"]["auc"] > methods["mean"]["auc"]
    weights = doc["learned_fit"]["weights"]
    assert weights[0] > 0 and weights[0] > weights[2]  # it weights the study's most abnormal view most
    # the evaluation's file is what inference loads
    path = tmp_path / "view_fusion.json"
    path.write_text(__import__("json").dumps(doc))
    loaded = LearnedViewFusion.load(path)
    assert np.allclose(loaded.weights, weights) and loaded.bias == pytest.approx(doc["learned_fit"]["bias"])
    with pytest.raises(FileNotFoundError, match="view fusion"):
        LearnedViewFusion.load(tmp_path / "absent.json")


def test_without_features_only_late_rules_are_compared():
    doc = compare_view_fusions(_records(20), None, None, n_bootstrap=0)
    assert set(doc["methods"]) == {"mean", "max", "median", "learned"}
