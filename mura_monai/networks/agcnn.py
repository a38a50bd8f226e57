"""Attention-guided CNN ("FusionNet" of Han, Lee and Kim; Guan et al., *Diagnose like a radiologist*).

A global branch reads the whole radiograph. Its last feature map, reduced to one heat map
(the maximum absolute activation over channels, scaled to [0, 1]), is thresholded; the
largest connected region's bounding box is cropped from the input and resized back to the
input size for a local branch with the same architecture. A fusion layer classifies the two
branches' pooled features together. Where a fracture is a few pixels wide in a 2000-pixel
radiograph, the local branch sees it at several times the global branch's resolution.

The network is trained in the paper's three stages (:data:`STAGES`); :meth:`set_stage` says
which output ``forward`` returns and which weights train, so MONAI's trainers, evaluators,
``CheckpointSaver`` and our ``BundlePredictor`` see an ordinary one-logit network at each
stage. :class:`~mura_monai.engines.staged_training.StagedTraining` moves through the stages.

The crop is a decision on each image that no traced graph keeps, so an export takes the three
fixed parts (:meth:`AttentionGuidedCNN.hybrid_parts`) one file each and scores through
:meth:`AttentionGuidedCNN.hybrid_forward`: the same :meth:`~AttentionGuidedCNN.branch_logits`,
crop included, on the exported parts (:mod:`mura_monai.export`).

References:

* Han S.J., Lee C.I., Kim S.-J., "Development of medical aid artificial intelligence through
  detection of musculoskeletal X-ray abnormalities using artificial neural networks in medical image
  data".
* Guan Q. et al., "Diagnose like a Radiologist: Attention Guided Convolutional Neural Network for
  Thorax Disease Classification", arXiv:1801.09927.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.utils import generate_spatial_bounding_box
from scipy import ndimage
from torch import nn

from mura_monai.networks.factory import densenet169, resnet50
from mura_monai.networks.parts import ExportPart

__all__ = ["AttentionGuidedCNN", "BranchPart", "FusionPart", "STAGES", "SplitBackbone", "attention_boxes",
           "attention_heatmap", "crop_boxes", "output_stage"]

STAGES: tuple[str, ...] = ("global", "local", "fusion")
BACKBONES = ("resnet50", "densenet169")
LOCAL_INITS = ("global", "pretrained")


def output_stage(stage_epochs: dict) -> str:
    """The logit a model trained with ``stage_epochs`` answers with: its last stage with epochs.

    ``--stage_epochs "{'global': 4, 'local': 0, 'fusion': 0}"`` trains the global branch alone;
    its ``model.pt`` must be evaluated and served on the global logit, not on a fusion layer
    (and a local branch) still at their random initialisation.

    Raises:
        ValueError: when no stage has epochs.
    """
    trained = [s for s in STAGES if int(dict(stage_epochs).get(s, 0)) > 0]
    if not trained:
        raise ValueError(f"no stage has epochs to train: {dict(stage_epochs)}")
    return trained[-1]


def attention_heatmap(feature_map: torch.Tensor) -> torch.Tensor:
    """Guan et al.'s heat map, ``(B, h, w)``: max |activation| over channels, min-max per image."""
    heat = feature_map.detach().abs().amax(dim=1)
    flat = heat.reshape(heat.shape[0], -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    return ((heat - lo[:, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None]).clamp(0.0, 1.0)


def attention_boxes(heatmap: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.7,
                    min_fraction: float = 0.25, min_size: tuple[int, int] = (1, 1)) -> list[tuple[int, int, int, int]]:
    """One ``(row0, col0, row1, col1)`` box per image (end exclusive) in input pixels.

    The heat map is upsampled to the input's size before thresholding (the feature map is 32x
    coarser than the image), the mask's largest 8-connected component is kept, and its bounding
    box is taken, widened about its centre to at least ``min_fraction`` of each side (and
    ``min_size`` pixels) so that a single hot pixel does not become a crop of noise. A map with nothing above the threshold
    (constant heat) gives the whole image.
    """
    rows, cols = image_size
    heat = F.interpolate(heatmap[:, None].float(), size=(rows, cols), mode="bilinear", align_corners=False)[:, 0]
    boxes = []
    for mask in (heat >= threshold).cpu().numpy():
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        if n == 0:
            boxes.append((0, 0, rows, cols))
            continue
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        largest = labels == (int(np.argmax(sizes)) + 1)
        (r0, c0), (r1, c1) = generate_spatial_bounding_box(largest[None])
        top, bottom = _widened(r0, r1, rows, max(min_fraction, min_size[0] / rows))
        left, right = _widened(c0, c1, cols, max(min_fraction, min_size[1] / cols))
        boxes.append((top, left, bottom, right))
    return boxes


def _widened(start: int, end: int, length: int, min_fraction: float) -> tuple[int, int]:
    """``[start, end)`` grown about its centre to ``min_fraction * length``, kept inside ``[0, length)``."""
    need = min(max(int(round(min_fraction * length)), end - start, 1), length)
    centre = (start + end) / 2.0
    lo = int(round(centre - need / 2.0))
    lo = min(max(lo, 0), length - need)
    return lo, lo + need


def crop_boxes(images: torch.Tensor, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> torch.Tensor:
    """Each image's box, resized (bilinear) to ``size``: the local branch's input."""
    crops = [F.interpolate(images[i : i + 1, :, r0:r1, c0:c1], size=size, mode="bilinear", align_corners=False)
             for i, (r0, c0, r1, c1) in enumerate(boxes)]
    return torch.cat(crops)


class SplitBackbone(nn.Module):
    """A backbone split into feature map -> pooled features -> logit, keeping its own module
    names under ``net`` so that the backbone's pretrained files load into each branch.

    ``net``: an already built :func:`~mura_monai.networks.resnet50` or
    :func:`~mura_monai.networks.densenet169` to split instead of building one.
    """

    def __init__(self, backbone: str, in_channels: int = 1, pretrained_path: str | Path | None = None,
                 pooling: str = "avg", net: nn.Module | None = None) -> None:
        super().__init__()
        if net is not None:
            self.net, self.backbone = net, backbone
            self.n_features = (net.class_layers.out if backbone == "densenet169" else net.fc).in_features
            return
        if backbone == "resnet50":
            self.net = resnet50(in_channels=in_channels, out_channels=1, pretrained_path=pretrained_path, pooling=pooling)
            self.n_features = self.net.fc.in_features
        elif backbone == "densenet169":
            self.net = densenet169(in_channels=in_channels, out_channels=1, pretrained_path=pretrained_path, pooling=pooling)
            self.n_features = self.net.class_layers.out.in_features
        else:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.backbone = backbone

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.backbone == "densenet169":
            return net.class_layers.relu(net.features(x))
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def pooled(self, feature_map: torch.Tensor) -> torch.Tensor:
        pool = self.net.class_layers.pool if self.backbone == "densenet169" else self.net.avgpool
        return torch.flatten(pool(feature_map), 1)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net.class_layers.out(pooled) if self.backbone == "densenet169" else self.net.fc(pooled)


class BranchPart(nn.Module):
    """A branch as one computation: ``image -> (feature map, pooled features, logit)``, or
    ``(pooled features, logit)`` without the map (``with_map=False``: the local branch's map is
    read by nothing)."""

    def __init__(self, branch: SplitBackbone, with_map: bool = True) -> None:
        super().__init__()
        self.branch = branch
        self.with_map = with_map

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature_map = self.branch.feature_map(x)
        pooled = self.branch.pooled(feature_map)
        logit = self.branch.classify(pooled)
        return (feature_map, pooled, logit) if self.with_map else (pooled, logit)


class FusionPart(nn.Module):
    """The fusion layer on the two branches' pooled features: ``(global, local) -> logit``."""

    def __init__(self, fusion: nn.Linear) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, global_features: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat([global_features, local_features], dim=1))


class AttentionGuidedCNN(nn.Module):
    """Global, local and fusion branches; ``forward`` returns the current stage's logit.

    Args:
        backbone: ``resnet50`` (the paper's and Han, Lee and Kim's) or ``densenet169``, for both branches.
        in_channels: 1 for radiographs; 3 for RGB-replicated input to ImageNet weights.
        pretrained_path: weights of the backbone (a file, its URL or ``imagenet``; see
            :mod:`mura_monai.networks.weights`), loaded into both branches (as the paper starts both from ImageNet).
        threshold: heat-map level that selects the local region (τ = 0.7 in the paper).
        min_crop_fraction: smallest crop side as a fraction of the input side.
        pooling: global pooling of both branches (see :func:`~mura_monai.networks.factory.global_pooling`).
        stage: ``global``, ``local`` or ``fusion`` (inference uses ``fusion``).
        local_init: where the local branch starts when its stage begins: ``global`` (the trained
            global branch) or ``pretrained`` (as built); see :meth:`start_stage`.
    """

    def __init__(self, backbone: str = "resnet50", in_channels: int = 1, pretrained_path: str | Path | None = None,
                 threshold: float = 0.7, min_crop_fraction: float = 0.25, pooling: str = "avg",
                 stage: str = "fusion", local_init: str = "global") -> None:
        super().__init__()
        self.global_branch = SplitBackbone(backbone, in_channels, pretrained_path, pooling)
        self.local_branch = SplitBackbone(backbone, in_channels, pretrained_path, pooling)
        self.fusion = nn.Linear(self.global_branch.n_features + self.local_branch.n_features, 1)
        if local_init not in LOCAL_INITS:
            raise ValueError(f"local_init must be one of {', '.join(LOCAL_INITS)}, got {local_init!r}")
        self.local_init = local_init
        self.threshold = threshold
        self.min_crop_fraction = min_crop_fraction
        self.stage = "fusion"
        self.set_stage(stage)

    def start_stage(self, stage: str) -> None:
        """Initialise what a stage trains from what the stages before it learnt (called once, when
        training enters the stage, not on resume).

        ``local``: the local branch starts from the trained global branch when ``local_init`` is
        ``global`` — the paper starts it from ImageNet, which this offline project has only when
        the user supplies a file (``local_init="pretrained"`` keeps what ``pretrained_path`` loaded).
        ``fusion``: the fusion layer starts as the mean of the two branches' classifiers, so its
        first epoch begins from averaging their logits rather than from noise.
        """
        if stage == "local" and self.local_init == "global":
            self.local_branch.load_state_dict(self.global_branch.state_dict())
        elif stage == "fusion":
            with torch.no_grad():
                for branch, part in ((self.global_branch, slice(0, self.global_branch.n_features)),
                                     (self.local_branch, slice(self.global_branch.n_features, None))):
                    self.fusion.weight[:, part] = self._head(branch).weight / 2
                self.fusion.bias.copy_((self._head(self.global_branch).bias + self._head(self.local_branch).bias) / 2)

    @staticmethod
    def _head(branch: SplitBackbone) -> nn.Linear:
        return branch.net.class_layers.out if branch.backbone == "densenet169" else branch.net.fc

    @property
    def cam_layer(self) -> str:
        """Where Grad-CAM reads attention: the global branch, whose map is in the input's frame
        (the local branch's is in the crop's)."""
        return "global_branch.net.layer4" if self.global_branch.backbone == "resnet50" else "global_branch.net.features"

    def set_stage(self, stage: str) -> None:
        """Select the output and freeze all but the stage's branch (the paper fine-tunes the
        local branch with the global one fixed, then the fusion layer with both fixed)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        self.stage = stage
        trainable = {"global": self.global_branch, "local": self.local_branch, "fusion": self.fusion}[stage]
        for module in (self.global_branch, self.local_branch, self.fusion):
            module.requires_grad_(module is trainable)
            if module is not trainable:
                # a zeroed (not None) gradient still moves a weight under Adam's momentum
                for param in module.parameters():
                    param.grad = None
        self.train(self.training)

    def train(self, mode: bool = True) -> AttentionGuidedCNN:
        """Frozen branches stay in eval mode: their BatchNorm statistics are part of what was learnt."""
        super().train(mode)
        for module in (self.global_branch, self.local_branch):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def local_boxes(self, x: torch.Tensor, global_map: torch.Tensor | None = None) -> list[tuple[int, int, int, int]]:
        """The crop boxes the global branch's attention selects for ``x``."""
        if global_map is None:
            with torch.no_grad():
                global_map = self.global_branch.feature_map(x)
        return attention_boxes(attention_heatmap(global_map), tuple(x.shape[-2:]), self.threshold, self.min_crop_fraction)

    def parts(self) -> dict[str, nn.Module]:
        """The fixed computations between which :meth:`branch_logits` crops, each a module of its
        own weights only: ``global`` (image -> feature map, pooled features, logit), ``local``
        (crop -> pooled features, logit) and ``fusion`` (both pooled features -> logit)."""
        return {"global": BranchPart(self.global_branch), "local": BranchPart(self.local_branch, with_map=False),
                "fusion": FusionPart(self.fusion)}

    def branch_logits(self, x: torch.Tensor,
                      parts: Mapping[str, Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]] | None = None,
                      ) -> dict[str, torch.Tensor]:
        """All three logits, ``{"global", "local", "fusion"}``, each ``(B, 1)``.

        ``parts`` stands for :meth:`parts` (e.g. exported graphs of them); the crop between the
        global and the local part is this method's either way. Without a ``fusion`` part there
        is no fusion logit.
        """
        run = self.parts() if parts is None else parts
        global_map, global_features, global_logit = run["global"](x)
        out = {"global": global_logit}
        if self.stage == "global":  # the local branch is not trained yet: no crop to pay for
            return out
        crops = crop_boxes(x, self.local_boxes(x, global_map), tuple(x.shape[-2:]))
        local_features, out["local"] = run["local"](crops)
        if "fusion" in run:
            out["fusion"] = run["fusion"](global_features, local_features)
        return out

    def hybrid_parts(self) -> dict[str, ExportPart]:
        """The parts the output stage needs (global; global and local; all three), for an
        export in parts (:mod:`mura_monai.networks.parts`)."""
        parts = self.parts()
        global_n, local_n = self.global_branch.n_features, self.local_branch.n_features
        specs = {
            "global": ExportPart(parts["global"], ("image",), ("feature_map", "features", "logits")),
            "local": ExportPart(parts["local"], ("crop",), ("features", "logits")),
            "fusion": ExportPart(parts["fusion"], ("global_features", "local_features"), ("logits",),
                                 example=lambda image: (torch.randn(len(image), global_n), torch.randn(len(image), local_n))),
        }
        return {name: specs[name] for name in STAGES[: STAGES.index(self.stage) + 1]}

    def hybrid_forward(self, x: torch.Tensor, parts: Mapping[str, Callable]) -> torch.Tensor:
        """:meth:`forward` on ``parts`` standing for :meth:`hybrid_parts`."""
        return self.branch_logits(x, parts)[self.stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch_logits(x)[self.stage]
