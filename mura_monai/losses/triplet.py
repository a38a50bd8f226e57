"""Regalla and Kudikala's metric-learning losses on a batch of L2-normalised embeddings.

Every loss here mines its triplets inside the batch, as the paper does: the batch is P classes x
K images (see :func:`mura_monai.engines.metric_learning.pk_sampler`) and each image is an anchor
in turn. pytorch-metric-learning does the mining (``BatchHardMiner``) and the standard triplet
margin loss; the two losses it does not have are written here:

* **triplet focal loss** (Zhang et al. 2018, the paper's TFL): batch-hard distances mapped to an
  exponential kernel, ``max(0, exp(D_ap*/σ) − exp(D_an*/σ) + m)``, so a hard triplet weighs
  exponentially more than an easy one;
* **selectively contrastive loss** (Xuan et al. 2020, the paper's SCL): on similarities ``S``,
  ``λ·S_an`` when the hardest negative is more similar than the hardest positive (the triplet is
  "wrong"; only the negative pair is pushed), else ``−log(e^S_ap / (e^S_ap + e^S_an))``.

The paper writes the losses as sums over anchors; here they are means, so the learning rate does
not depend on the batch size. Targets may be the bundles' ``(B, 2)`` label/body-part tensor
(see :class:`~mura_monai.engines.LabelAndBodyPart`) or plain ``(B,)`` labels.

Reference: Regalla S.T., Kudikala S.P., "Research on Musculoskeletal Abnormality Detection using
Deep Learning Techniques", B.Tech report, IIITDM Kurnool, 2023.
"""
from __future__ import annotations

import torch
from pytorch_metric_learning import distances, losses, miners
from torch import nn

__all__ = ["TRIPLET_LOSSES", "BatchHardTripletLoss", "SelectivelyContrastiveLoss", "TripletFocalLoss",
           "TripletLoss", "triplet_loss"]


def _labels(target: torch.Tensor) -> torch.Tensor:
    """Class of each embedding: the label column of a ``(B, 2)`` bundle target, or ``(B,)`` labels."""
    target = torch.as_tensor(target)
    return (target[:, 0] if target.ndim == 2 else target.reshape(-1)).round().long()


def _no_triplet(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph: a batch without a positive and a negative for any anchor
    (one class only) contributes nothing, and DDP still sees a gradient for every parameter."""
    return embeddings.sum() * 0.0


class TripletLoss(nn.Module):
    """The plain triplet margin loss over every valid triplet of the batch (the paper's baseline)."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.loss = losses.TripletMarginLoss(margin=margin, distance=distances.LpDistance(normalize_embeddings=True))

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings.float(), _labels(target).to(embeddings.device))


class BatchHardTripletLoss(nn.Module):
    """BHTL (Hermans et al. 2017): the hardest positive and negative of each anchor in the batch,
    ``max(0, D_ap* − D_an* + m)`` on Euclidean distances of normalised embeddings."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        distance = distances.LpDistance(normalize_embeddings=True)
        self.miner = miners.BatchHardMiner(distance=distance)
        self.loss = losses.TripletMarginLoss(margin=margin, distance=distance)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        embeddings, labels = embeddings.float(), _labels(target).to(embeddings.device)
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


class TripletFocalLoss(nn.Module):
    """TFL: batch-hard triplets with distances in an exponential kernel.

    Args:
        margin: ``m``, in the kernel's units (``exp(D/σ)``, 1 at distance 0).
        sigma: ``σ``; smaller makes hard triplets weigh more. Distances of unit vectors lie in
            [0, 2], so σ = 0.3 spans a factor of ``e^(2/0.3)`` ≈ 800 between the nearest and the
            farthest pair (Zhang et al. use 0.3).
    """

    def __init__(self, margin: float = 0.3, sigma: float = 0.3) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.margin, self.sigma = float(margin), float(sigma)
        self.distance = distances.LpDistance(normalize_embeddings=True)
        self.miner = miners.BatchHardMiner(distance=self.distance)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        embeddings, labels = embeddings.float(), _labels(target).to(embeddings.device)
        anchor, positive, negative = self.miner(embeddings, labels)
        if anchor.numel() == 0:
            return _no_triplet(embeddings)
        d = self.distance(embeddings)
        d_ap, d_an = d[anchor, positive], d[anchor, negative]
        return torch.relu(torch.exp(d_ap / self.sigma) - torch.exp(d_an / self.sigma) + self.margin).mean()


class SelectivelyContrastiveLoss(nn.Module):
    """SCL on cosine similarities of the batch-hard positive and negative of each anchor.

    Args:
        lambda_: ``λ``, the weight of the negative similarity on "wrong" triplets.
        temperature: the similarities are divided by it inside the softmax term; 1 is the paper's
            formula as written, Xuan et al. train with 0.1 (cosine similarities in [−1, 1] give
            the softmax little to work with otherwise).
    """

    def __init__(self, lambda_: float = 1.0, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.lambda_, self.temperature = float(lambda_), float(temperature)
        self.similarity = distances.CosineSimilarity()
        self.miner = miners.BatchHardMiner(distance=self.similarity)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        embeddings, labels = embeddings.float(), _labels(target).to(embeddings.device)
        anchor, positive, negative = self.miner(embeddings, labels)
        if anchor.numel() == 0:
            return _no_triplet(embeddings)
        s = self.similarity(embeddings)
        s_ap, s_an = s[anchor, positive], s[anchor, negative]
        logits = torch.stack([s_ap, s_an], dim=1) / self.temperature
        softmax_term = -torch.log_softmax(logits, dim=1)[:, 0]
        return torch.where(s_an > s_ap, self.lambda_ * s_an, softmax_term).mean()


TRIPLET_LOSSES = {
    "triplet": TripletLoss,
    "batch_hard": BatchHardTripletLoss,
    "focal": TripletFocalLoss,
    "selectively_contrastive": SelectivelyContrastiveLoss,
}


def triplet_loss(name: str = "batch_hard", margin: float = 0.2, sigma: float = 0.3, lambda_: float = 1.0,
                 temperature: float = 0.1) -> nn.Module:
    """The loss a bundle override names (``--loss_name``), with the parameters it takes."""
    if name == "triplet":
        return TripletLoss(margin)
    if name == "batch_hard":
        return BatchHardTripletLoss(margin)
    if name == "focal":
        return TripletFocalLoss(margin, sigma)
    if name == "selectively_contrastive":
        return SelectivelyContrastiveLoss(lambda_, temperature)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(TRIPLET_LOSSES)}")
