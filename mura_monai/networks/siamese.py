"""Regalla and Kudikala's Siamese embedding network and its embeddings' classifier, as one module.

They train a DenseNet-169 or ResNet-50 "twin" to a 128- or 256-d embedding with triplet
losses and then classifies the embeddings. The twins share their weights, so one network run on
each image of a P x K batch is the whole Siamese triplet network: the losses of
:mod:`mura_monai.losses.triplet` compare the embeddings inside the batch.

The classifier is fitted by scikit-learn on the training set's embeddings (logistic regression
and distance-weighted k-NN, both every time) and held here as buffers, so ``model.pt`` saves and
loads like any bundle model and ``forward(x)`` answers one abnormality logit per image, which is
what the evaluators, ``BundlePredictor``, Grad-CAM and ``mura-monai infer`` read. Which of the
two answers is the bundle's ``head`` setting; the evaluation reports both.

Layout, so that training and the other tools each see what they need:

* ``backbone``: image -> pooled features (the CAM layer is found inside it);
* ``classifier``: pooled features -> embedding -> logit; the early view fusion of
  :mod:`mura_monai.multiview` pools the views' features at its input (``fusion_head``);
* :class:`Embedder`: the view of the same weights the trainer optimises (image -> embedding).

Reference: Regalla S.T., Kudikala S.P., "Research on Musculoskeletal Abnormality Detection using
Deep Learning Techniques", B.Tech report, IIITDM Kurnool, 2023.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mura_monai.networks.factory import densenet169, resnet50
from mura_monai.networks.fitted_buffers import FittedBuffers

__all__ = ["EMBEDDING_HEADS", "SIAMESE_BACKBONES", "Embedder", "EmbeddingClassifier", "EmbeddingHead",
           "SiameseNet", "siamese_net"]

EMBEDDING_HEADS = ("logistic", "knn")
SIAMESE_BACKBONES = {"densenet169": 1664, "resnet50": 2048}
_EPS = 1e-6


class EmbeddingHead(FittedBuffers):
    """Logistic regression and distance-weighted k-NN on embeddings, fitted by scikit-learn.

    Args:
        dim: embedding length.
        method: which classifier ``forward`` answers with, ``logistic`` or ``knn``.
        k: neighbours of the k-NN.

    The logistic regression sees standardised embeddings (scikit-learn's ``StandardScaler``,
    kept as ``mean`` / ``scale``): a metric-learning loss fixes distances, not the scale along
    each axis, and an embedding squeezed into a small region early in training (the triplet
    losses' well-known collapse) otherwise leaves the regularised regression predicting the prior
    for every image. The k-NN keeps the training embeddings and labels (``reference``); its probability is
    scikit-learn's ``KNeighborsClassifier(weights="distance").predict_proba``: the labels of the
    k nearest references weighted by inverse distance. A state dict resizes the reference to the
    file's, so a freshly built head loads any fitted ``model.pt``.
    """

    _FITTED = ("reference", "reference_labels")

    def __init__(self, dim: int, method: str = "logistic", k: int = 15) -> None:
        super().__init__()
        if method not in EMBEDDING_HEADS:
            raise ValueError(f"unknown embedding head {method!r}; choose one of {', '.join(EMBEDDING_HEADS)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.dim, self.method, self.k = int(dim), method, int(k)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(dim))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("reference", torch.zeros(0, dim))
        self.register_buffer("reference_labels", torch.zeros(0))

    @property
    def fitted(self) -> bool:
        return self.reference.shape[0] > 0

    def fit(self, embeddings, labels, C: float = 1.0) -> EmbeddingHead:
        """Fit both classifiers on ``(N, dim)`` embeddings and their 0/1 labels; returns ``self``.

        Raises:
            ValueError: when the labels hold one class only (nothing to separate).
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(torch.as_tensor(embeddings).detach().cpu().float(), dtype=np.float64)
        y = np.asarray(torch.as_tensor(labels).detach().cpu()).reshape(-1).round().astype(int)
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) != len(y):
            raise ValueError(f"expected ({len(y)}, {self.dim}) embeddings for {len(y)} labels, got {x.shape}")
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(f"the embedding classifier needs normal and abnormal images, got labels {sorted(set(y))}")
        scaler = StandardScaler().fit(x)
        logistic = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(x), y)
        device = self.weight.device
        self.mean = torch.as_tensor(scaler.mean_, dtype=torch.float32, device=device)
        self.scale = torch.as_tensor(scaler.scale_, dtype=torch.float32, device=device)
        self.weight = torch.as_tensor(logistic.coef_[0], dtype=torch.float32, device=device)
        self.bias = torch.as_tensor(logistic.intercept_[0], dtype=torch.float32, device=device)
        self.reference = torch.as_tensor(x, dtype=torch.float32, device=device)
        self.reference_labels = torch.as_tensor(y, dtype=torch.float32, device=device)
        return self

    def knn_probability(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B,)`` distance-weighted share of abnormal references among the k nearest."""
        d = torch.cdist(embeddings.float(), self.reference)
        k = min(self.k, self.reference.shape[0])
        nearest, index = d.topk(k, dim=1, largest=False)
        weights = 1.0 / nearest.clamp_min(_EPS)
        return (weights * self.reference_labels[index]).sum(1) / weights.sum(1)

    def logits(self, embeddings: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """``(B,)`` abnormality logits of ``method`` (default: the head's own)."""
        if not self.fitted:
            raise RuntimeError("the embedding classifier is not fitted: train the bundle or load its model.pt")
        method = method or self.method
        if method == "logistic":
            return ((embeddings.float() - self.mean) / self.scale) @ self.weight + self.bias
        if method == "knn":
            p = self.knn_probability(embeddings).clamp(_EPS, 1 - _EPS)
            return torch.log(p) - torch.log1p(-p)
        raise ValueError(f"unknown embedding head {method!r}; choose one of {', '.join(EMBEDDING_HEADS)}")

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logits(embeddings)[:, None].to(embeddings.dtype)


class EmbeddingClassifier(nn.Module):
    """Pooled features -> L2-normalised embedding -> the fitted head's logit."""

    def __init__(self, n_features: int, dim: int = 256, method: str = "logistic", k: int = 15) -> None:
        super().__init__()
        self.projection = nn.Linear(n_features, dim)
        self.head = EmbeddingHead(dim, method, k)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(features.reshape(features.shape[0], -1)), dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(features))


class SiameseNet(nn.Module):
    """A CNN backbone, its embedding and the classifier on it; ``forward`` gives one logit per image.

    Args:
        backbone: image -> ``(B, n_features)`` pooled features.
        n_features: the backbone's feature length.
        dim: embedding length (the paper's 128 or 256).
        head: ``logistic`` or ``knn``.
        k: neighbours of the k-NN head.
    """

    def __init__(self, backbone: nn.Module, n_features: int, dim: int = 256, head: str = "logistic", k: int = 15) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = EmbeddingClassifier(n_features, dim, head, k)

    @property
    def fusion_head(self) -> nn.Module:
        """What early view fusion applies to the views' pooled features (see :mod:`mura_monai.multiview`)."""
        return self.classifier

    @property
    def head(self) -> EmbeddingHead:
        return self.classifier.head

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))


class Embedder(nn.Module):
    """The trainer's view of a :class:`SiameseNet`: image -> embedding, the same parameters.

    Checkpoints save the :class:`SiameseNet` itself (with its fitted head); the optimiser and DDP
    see this module, whose parameters are exactly the backbone's and the projection's.
    """

    def __init__(self, net: SiameseNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embed(images)


def siamese_net(backbone: str = "densenet169", dim: int = 256, head: str = "logistic", k: int = 15, in_channels: int = 1,
                pretrained_path: str | Path | None = None, pooling: str = "avg") -> SiameseNet:
    """Regalla and Kudikala's Siamese network on one of its two backbones.

    Args:
        backbone: ``densenet169`` or ``resnet50``.
        dim: embedding length (the paper compares 128 and 256).
        head: the classifier ``forward`` answers with (``logistic`` or ``knn``).
        k: neighbours of the k-NN head.
        in_channels: 1 for radiographs.
        pretrained_path: ImageNet weights of the backbone (torchvision or MONAI naming): a file, its URL or
            ``imagenet`` (see :mod:`mura_monai.networks.weights`).
        pooling: the backbone's global pooling, ``avg`` or ``max``.
    """
    if backbone == "densenet169":
        net = densenet169(in_channels, 1, pretrained_path=pretrained_path, pooling=pooling)
        net.class_layers.out = nn.Identity()  # pooled features, not DenseNet's own logit
    elif backbone == "resnet50":
        net = resnet50(in_channels, 1, pretrained_path, pooling)
        net.fc = nn.Identity()
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(SIAMESE_BACKBONES)}")
    return SiameseNet(net, SIAMESE_BACKBONES[backbone], dim, head, k)
