"""Regalla and Kudikala's triplet losses against values worked out by hand and by a brute-force loop."""
import math

import numpy as np
import pytest
import torch

from mura_monai.losses import (
    BatchHardTripletLoss,
    SelectivelyContrastiveLoss,
    TripletFocalLoss,
    TripletLoss,
    triplet_loss,
)

# unit vectors at 0, 90, 180 and 270 degrees: normal at 0/90, abnormal at 180/270
SQUARE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
SQUARE_LABELS = torch.tensor([0, 0, 1, 1])


def brute_force_hardest(x: np.ndarray, y: np.ndarray, metric: str):
    """(anchor, hardest positive value, hardest negative value) by looping over every pair."""
    out = []
    for a in range(len(x)):
        pos, neg = [], []
        for b in range(len(x)):
            if b == a:
                continue
            v = np.linalg.norm(x[a] - x[b]) if metric == "distance" else float(x[a] @ x[b])
            (pos if y[b] == y[a] else neg).append(v)
        if pos and neg:
            if metric == "distance":  # hardest: farthest positive, nearest negative
                out.append((a, max(pos), min(neg)))
            else:  # similarities: least similar positive, most similar negative
                out.append((a, min(pos), max(neg)))
    return out


def random_batch(seed: int, n: int = 12, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    y = torch.arange(n) % 2
    return x, y


def test_focal_loss_on_the_square_is_the_margin():
    # every anchor's farthest positive and nearest negative are both sqrt(2) away: exp terms cancel
    loss = TripletFocalLoss(margin=0.3, sigma=1.0)(SQUARE, SQUARE_LABELS)
    assert loss.item() == pytest.approx(0.3, abs=1e-5)


def test_selectively_contrastive_on_the_square_is_log2():
    # S_ap = S_an = 0 for every anchor: not a "wrong" triplet, so -log(1 / (1 + 1))
    loss = SelectivelyContrastiveLoss(lambda_=1.0, temperature=1.0)(SQUARE, SQUARE_LABELS)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_selectively_contrastive_pushes_only_the_negative_of_a_wrong_triplet():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = SelectivelyContrastiveLoss(lambda_=2.0, temperature=1.0)(x, y)
    # anchor 0: S_ap 0 < S_an 0.6 -> 2 * 0.6; anchor 1: S_ap 0 < S_an 0.8 -> 2 * 0.8;
    # anchor 2 has no positive and is not mined
    assert loss.item() == pytest.approx((1.2 + 1.6) / 2, abs=1e-5)
    loss.backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_focal_loss_matches_a_brute_force_loop(seed):
    x, y = random_batch(seed)
    sigma, margin = 0.5, 0.2
    expected = np.mean([max(0.0, math.exp(dp / sigma) - math.exp(dn / sigma) + margin)
                        for _, dp, dn in brute_force_hardest(x.numpy(), y.numpy(), "distance")])
    assert TripletFocalLoss(margin, sigma)(x, y).item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_matches_a_brute_force_loop(seed):
    x, y = random_batch(seed)
    terms = [max(0.0, dp - dn + 0.5) for _, dp, dn in brute_force_hardest(x.numpy(), y.numpy(), "distance")]
    # pytorch-metric-learning averages over the triplets with a positive loss
    positive = [t for t in terms if t > 0]
    assert BatchHardTripletLoss(margin=0.5)(x, y).item() == pytest.approx(np.mean(positive), rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_selectively_contrastive_matches_a_brute_force_loop(seed):
    x, y = random_batch(seed)
    lam, t = 0.7, 0.1
    terms = []
    for _, sp, sn in brute_force_hardest(x.numpy(), y.numpy(), "similarity"):
        terms.append(lam * sn if sn > sp else -math.log(math.exp(sp / t) / (math.exp(sp / t) + math.exp(sn / t))))
    assert SelectivelyContrastiveLoss(lam, t)(x, y).item() == pytest.approx(np.mean(terms), rel=1e-4)


@pytest.mark.parametrize("name", ["triplet", "batch_hard", "focal", "selectively_contrastive"])
def test_every_loss_takes_bundle_targets_and_trains_towards_separation(name):
    torch.manual_seed(0)
    x, y = random_batch(3, n=16, dim=4)
    x = x.clone().requires_grad_(True)
    target = torch.stack([y.float(), torch.zeros(16)], dim=1)  # LabelAndBodyPart's (label, body part)
    loss_fn = triplet_loss(name)
    optimiser = torch.optim.SGD([x], lr=0.5)
    first = None
    for _ in range(30):
        optimiser.zero_grad()
        loss = loss_fn(torch.nn.functional.normalize(x, dim=1), target)
        loss.backward()
        optimiser.step()
        first = loss.item() if first is None else first
    z = torch.nn.functional.normalize(x.detach(), dim=1)
    within = torch.cdist(z[y == 0], z[y == 0]).mean() + torch.cdist(z[y == 1], z[y == 1]).mean()
    between = torch.cdist(z[y == 0], z[y == 1]).mean()
    assert loss.item() < first
    assert between > within / 2  # classes pulled apart relative to their spread


def test_one_class_batch_gives_a_zero_that_keeps_the_graph():
    x = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    for loss_fn in (TripletFocalLoss(), SelectivelyContrastiveLoss(), BatchHardTripletLoss(), TripletLoss()):
        loss = loss_fn(x, torch.zeros(4))
        assert loss.item() == 0.0
        loss.backward()


def test_unknown_loss_and_bad_parameters_are_named():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        triplet_loss("hinge")
    with pytest.raises(ValueError, match="sigma"):
        TripletFocalLoss(sigma=0)
    with pytest.raises(ValueError, match="temperature"):
        SelectivelyContrastiveLoss(temperature=0)
