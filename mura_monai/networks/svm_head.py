"""Huschauer's "CNN features + bagged SVMs" as one torch module.

Huschauer trains a bag of 10 polynomial-kernel (degree 5) SVMs on ResNet features. scikit-learn
fits them; this module holds what the fit found as tensors, so the model saves and loads like
any bundle model (``model.pt``, ``torch.load(..., weights_only=True)``, no pickle), runs on the
evaluator's device, and answers ``forward(x)`` with one abnormality logit per image, which is
what ``BundlePredictor``, ``StudyAUC`` and ``MetricsReportWriter`` read. It is differentiable,
so Grad-CAM heatmaps work through it as through a linear head.

The head reproduces this scikit-learn pipeline (see
:func:`mura_monai.engines.feature_svm.fit_bagged_svm`)::

    StandardScaler -> CalibratedClassifierCV(BaggingClassifier(SVC(kernel="poly")),
                                             method="sigmoid", ensemble=False)

* the bag's decision value is ``BaggingClassifier.decision_function``: the mean over members of
  ``sum_i dual_coef_i * (gamma * <x_S, sv_i> + coef0) ** degree + intercept`` on each member's
  feature subset ``S``;
* the probability is one Platt sigmoid of that value, fitted out of fold by
  ``CalibratedClassifierCV`` (sklearn's replacement for the deprecated ``SVC(probability=True)``):
  ``p = 1 / (1 + exp(a * d + b))``, so the logit is exactly ``-(a * d + b)``.

A bare ``BaggingClassifier`` (no calibration) is accepted too; its logit is the decision value.

Reference: Huschauer S., "Deep Learning-based Classification of Musculoskeletal Radiographs - Learn
to Zoom from Network Response", ZHAW.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mura_monai.networks.factory import resnet50
from mura_monai.networks.fitted_buffers import FittedBuffers
from mura_monai.networks.pretrained import load_pretrained

__all__ = ["BaggedSVMHead", "ResNetSVM", "resnet_svm"]

RESNET50_FEATURES = 2048


def _steps(model) -> tuple[object | None, object]:
    """(scaler or None, classifier) of a fitted Pipeline, or (None, model) of a bare estimator."""
    steps = [step for _, step in getattr(model, "steps", [(None, model)])]
    if len(steps) == 1:
        return None, steps[0]
    if len(steps) == 2 and hasattr(steps[0], "mean_") and hasattr(steps[0], "scale_"):
        return steps[0], steps[1]
    raise ValueError(f"expected [StandardScaler,] classifier, got steps {[type(s).__name__ for s in steps]}")


def _bag_and_platt(classifier) -> tuple[object, tuple[float, float]]:
    """The BaggingClassifier and the sigmoid ``(a, b)`` of ``p = 1 / (1 + exp(a d + b))``."""
    calibrated = getattr(classifier, "calibrated_classifiers_", None)
    if calibrated is None:
        return classifier, (-1.0, 0.0)  # p = sigmoid(d): the logit is the decision value
    if len(calibrated) != 1 or classifier.method != "sigmoid":
        raise ValueError("the calibration must be CalibratedClassifierCV(method='sigmoid', ensemble=False): "
                         f"got method {classifier.method!r} with {len(calibrated)} calibrated copies")
    (calibrator,) = calibrated[0].calibrators
    return calibrated[0].estimator, (float(calibrator.a_), float(calibrator.b_))


class BaggedSVMHead(FittedBuffers):
    """Standardisation, bagged polynomial SVMs and their Platt sigmoid, as buffers.

    Args:
        n_features: length of the feature vector it classifies (2048 for ResNet-50).

    The buffers' sizes (members, support vectors, feature subset) are known only after a fit;
    :meth:`load_sklearn` sets them, and loading a state dict resizes them to the file's, so a
    freshly built head takes any fitted ``model.pt``. Support vectors are stored in float32
    (half the file); the kernel is evaluated in float64, as scikit-learn does.
    """

    _FITTED = ("feature_index", "support_vectors", "dual_coef", "intercept", "gamma")

    def __init__(self, n_features: int = RESNET50_FEATURES) -> None:
        super().__init__()
        self.n_features = int(n_features)
        f64 = torch.float64
        self.register_buffer("mean", torch.zeros(n_features, dtype=f64))
        self.register_buffer("scale", torch.ones(n_features, dtype=f64))
        self.register_buffer("feature_index", torch.zeros(0, n_features, dtype=torch.long))  # (members, subset)
        self.register_buffer("support_vectors", torch.zeros(0, 0, n_features))  # (members, max SVs, subset), zero-padded
        self.register_buffer("dual_coef", torch.zeros(0, 0, dtype=f64))  # (members, max SVs); padding has 0
        self.register_buffer("intercept", torch.zeros(0, dtype=f64))
        self.register_buffer("gamma", torch.zeros(0, dtype=f64))
        self.register_buffer("coef0", torch.zeros((), dtype=f64))
        self.register_buffer("degree", torch.zeros((), dtype=torch.long))
        self.register_buffer("platt", torch.tensor([-1.0, 0.0], dtype=f64))  # sklearn's (a, b)

    @property
    def n_estimators(self) -> int:
        return int(self.dual_coef.shape[0])

    @property
    def n_support_vectors(self) -> int:
        return int((self.dual_coef != 0).sum())

    def load_sklearn(self, model) -> BaggedSVMHead:
        """Copy a fitted pipeline (see the module docstring) into the buffers; returns ``self``.

        Raises:
            ValueError: naming what is not a bag of polynomial ``SVC`` on ``n_features`` inputs.
        """
        scaler, classifier = _steps(model)
        bag, (a, b) = _bag_and_platt(classifier)
        members = list(getattr(bag, "estimators_", []))
        if not members:
            raise ValueError(f"expected a fitted BaggingClassifier, got {type(bag).__name__}")
        if list(bag.classes_) != [0, 1]:
            raise ValueError(f"expected labels 0 (normal) and 1 (abnormal), got classes {list(bag.classes_)}")
        kernels = {(m.kernel, int(m.degree), float(m.coef0)) for m in members}
        if len(kernels) != 1 or next(iter(kernels))[0] != "poly":
            raise ValueError(f"every member must be SVC(kernel='poly') with one degree and coef0, got {sorted(kernels)}")
        if bag.n_features_in_ != self.n_features:
            raise ValueError(f"the SVMs were fitted on {bag.n_features_in_} features, the head takes {self.n_features}")
        _, degree, coef0 = kernels.pop()
        n_sv = max(m.support_vectors_.shape[0] for m in members)
        subset = len(bag.estimators_features_[0])
        vectors = np.zeros((len(members), n_sv, subset), dtype=np.float32)
        dual = np.zeros((len(members), n_sv))
        for k, member in enumerate(members):
            count = member.support_vectors_.shape[0]
            vectors[k, :count] = member.support_vectors_
            dual[k, :count] = member.dual_coef_[0]
        fitted = {
            "mean": scaler.mean_ if scaler is not None else np.zeros(self.n_features),
            "scale": scaler.scale_ if scaler is not None else np.ones(self.n_features),
            "feature_index": np.stack(bag.estimators_features_).astype(np.int64),
            "support_vectors": vectors,
            "dual_coef": dual,
            "intercept": np.array([m.intercept_[0] for m in members]),
            "gamma": np.array([m._gamma for m in members]),
            "coef0": np.array(coef0),
            "degree": np.array(degree),
            "platt": np.array([a, b]),
        }
        for name, value in fitted.items():
            old = self._buffers[name]
            self._buffers[name] = torch.as_tensor(value, dtype=old.dtype, device=old.device).clone()
        return self


    def decision_function(self, features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64: ``BaggingClassifier.decision_function`` of the standardised features."""
        if self.n_estimators == 0:
            raise RuntimeError("the SVM head is not fitted: train the bundle or load its model.pt")
        # float64 throughout: a degree-5 power of float16/32 dot products loses sklearn's values, and
        # autocast (AMP on GPUs) leaves float64 operations alone
        x = (features.reshape(features.shape[0], -1).double() - self.mean) / self.scale
        dots = torch.einsum("bef,esf->bes", x[:, self.feature_index], self.support_vectors.double())
        # the degree as the tensor it is stored in: int(self.degree) would be a data-dependent
        # scalar to torch.export, which the ONNX exporter cannot turn into Pow's exponent
        kernel = (self.gamma[None, :, None] * dots + self.coef0).pow(self.degree)
        members = (kernel * self.dual_coef).sum(-1) + self.intercept
        return members.mean(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` logit of the calibrated probability of "abnormal", in the features' dtype."""
        a, b = self.platt
        return (-(a * self.decision_function(features) + b))[:, None].to(features.dtype)


class ResNetSVM(nn.Module):
    """A fixed CNN feature extractor and the bagged-SVM head; one logit per image.

    Args:
        backbone: maps ``(B, C, H, W)`` images to ``(B, n_features)`` pooled features.
        n_features: the backbone's feature length.

    The backbone's parameters are frozen: only the SVMs are fitted, and nothing here trains by
    gradient (Grad-CAM still reaches its feature maps through the input's gradient).
    """

    def __init__(self, backbone: nn.Module, n_features: int = RESNET50_FEATURES) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.head = BaggedSVMHead(n_features)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, n_features)`` pooled backbone features, what the SVMs are fitted on."""
        return self.backbone(images).reshape(images.shape[0], -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def resnet_svm(in_channels: int = 1, pretrained_path: str | Path | None = None, backbone_ckpt: str | Path | None = None,
               pooling: str = "avg") -> ResNetSVM:
    """Huschauer's feature-extraction model on :func:`~mura_monai.networks.resnet50` features.

    Huschauer extracted ResNet-152 ImageNet features briefly trained on MURA; ResNet-50 is the
    ResNet this project carries (same layout, 2048-d pooled features, torchvision's names).

    Args:
        in_channels: 1 for radiographs.
        pretrained_path: torchvision-named ImageNet ``resnet50`` weights: a file, its URL or ``imagenet``
            (see :mod:`mura_monai.networks.weights`).
        backbone_ckpt: a ``model.pt`` trained by ``bundles/resnet50`` (loaded after, so it wins
            over ``pretrained_path``): "pretrained for a few iterations on MURA" as the paper did.
        pooling: the backbone's global pooling, ``avg`` or ``max`` (as the checkpoint was trained).
    """
    backbone = load_pretrained(resnet50(in_channels, 1, pretrained_path, pooling), backbone_ckpt)
    backbone.fc = nn.Identity()  # pooled features, not the ResNet's own abnormality logit
    return ResNetSVM(backbone, RESNET50_FEATURES)
