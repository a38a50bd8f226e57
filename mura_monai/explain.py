"""Heatmaps that show a reader where the networks looked: CAMs through ``monai.visualize``.

Grad-CAM (batched), Grad-CAM++ and SmoothGrad (batch 1: MONAI's limit) on any of this project's
networks, mapped back from the square network input to the radiograph's own pixel grid (the
preprocessing resized and padded it), combined across an ensemble's members by weight and
probability, and blended over the radiograph for PNG files and DICOM secondary captures.

``monai.visualize`` registers hooks on the model that it never removes and switches the target
layer's ``inplace`` off; members stay loaded in the listener for days, so every call here leaves
the network exactly as it found it.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.utils import convert_to_tensor
from monai.visualize import GradCAM, GradCAMpp, SmoothGrad
from torch import nn

__all__ = [
    "CAM_METHODS", "HEATMAP_ALPHA", "HEATMAP_METHOD", "cam_to_original", "compute_cam", "ensemble_cam", "explain_image",
    "explain_prepared", "overlay", "target_layer",
    "write_overlay_png",
]

CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcampp", "smoothgrad")
# Grad-CAM at 40 % opacity unless a bundle says otherwise: a reader still sees the bone under the colour.
HEATMAP_METHOD = "gradcam"
HEATMAP_ALPHA = 0.4
# the CAM layer each network was probed for (weak keys: a network unloaded is forgotten)
_TARGET_LAYERS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_NOT_FEATURES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Dropout, nn.Flatten)


def _first_conv(network: nn.Module) -> nn.Conv2d:
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(network).__name__} has no 2-D convolution: no CAM layer to take")


def target_layer(network: nn.Module, probe_size: int = 128) -> str:
    """Name of the last layer whose output is still a spatial feature map (the CAM layer).

    Found by one probe forward pass, so it works for MONAI's DenseNet, ResNet, EfficientNet and
    our VGG alike without a table of names; pooling and dropout layers are skipped because their
    maps are coarser copies of the features before them, and so are modules called more than once
    per forward (EfficientNet reuses one activation in the stem and the head): MONAI's backward
    hook would keep the gradient of the wrong call. A network with a ``cam_layer`` attribute
    (the attention-guided CNN, whose local branch sees a crop) names its own.
    """
    declared = getattr(network, "cam_layer", None)
    if declared:  # a network with branches says which branch's map is in the input's frame
        return declared
    if network in _TARGET_LAYERS:  # the probe is a forward pass: once per network, not once per heatmap
        return _TARGET_LAYERS[network]
    conv = _first_conv(network)
    order: list[str] = []
    handles = []
    for name, module in network.named_modules():
        if name and not isinstance(module, _NOT_FEATURES):
            def record(_m, _i, output, name=name):
                if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) > 1:
                    order.append(name)
            handles.append(module.register_forward_hook(record))
    try:
        with _eval_mode(network), torch.no_grad():
            network(torch.zeros(1, conv.in_channels, probe_size, probe_size, device=conv.weight.device))
    finally:
        for handle in handles:
            handle.remove()
    once = [name for name in order if order.count(name) == 1]
    if not once:
        raise ValueError(f"no spatial feature map found in {type(network).__name__}")
    _TARGET_LAYERS[network] = once[-1]
    return once[-1]


@contextmanager
def _eval_mode(network: nn.Module):
    training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(training)


@contextmanager
def _restored(network: nn.Module):
    """Undo what ``monai.visualize`` leaves behind: hooks, ``inplace`` switches, gradients."""
    modules = list(network.modules())
    hooks = [(set(m._forward_hooks), set(m._backward_hooks)) for m in modules]
    inplace = [(m, m.__dict__["inplace"]) for m in modules if "inplace" in m.__dict__]
    grads = [p.grad for p in network.parameters()]
    trainable = [p.requires_grad for p in network.parameters()]
    try:
        # a CAM needs gradients of the feature maps, not of the weights: frozen weights spare the
        # backward pass their gradients (about half its work) and leave the maps as they were
        for param in network.parameters():
            param.requires_grad_(False)
        with _eval_mode(network):
            yield
    finally:
        for param, flag in zip(network.parameters(), trainable):
            param.requires_grad_(flag)
        for module, (forward, backward) in zip(modules, hooks):
            for key in set(module._forward_hooks) - forward:
                del module._forward_hooks[key]
            for key in set(module._backward_hooks) - backward:
                del module._backward_hooks[key]
        for module, value in inplace:
            module.__dict__["inplace"] = value
        for param, grad in zip(network.parameters(), grads):
            param.grad = grad


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1]; a constant map (nothing stands out) becomes zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    span = (hi - lo).clamp_min(1e-12)
    out = (flat - lo[:, None]) / span[:, None]
    out[(hi - lo) <= 1e-12] = 0.0
    return torch.nan_to_num(out, nan=0.0).reshape(maps.shape)


def compute_cam(
    network: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    layer: str | None = None,
    class_idx: int = 0,
    smoothgrad_samples: int = 8,
    logits: list | None = None,
) -> torch.Tensor:
    """Saliency of the abnormality logit, ``(B, 1, H, W)`` in [0, 1] at the input's size.

    ``logits``: a list that receives the network's output of the CAM's own forward pass
    (Grad-CAM methods), so that a caller needing the probability too does not run another."""
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {list(CAM_METHODS)}, got {method!r}")
    device = next(network.parameters()).device
    x = images.detach().to(device).float()
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    if layer is None and hasattr(network, "explained_by"):  # a routed model: explain the part model that scored it
        with _eval_mode(network):
            scorers = network.explained_by(x)
        return torch.cat([compute_cam(scorer, x[i : i + 1], method, None, class_idx, smoothgrad_samples)
                          for i, scorer in enumerate(scorers)])
    with _restored(network), torch.enable_grad():
        if method == "smoothgrad":
            saliency = SmoothGrad(network, n_samples=smoothgrad_samples, verbose=False)
            maps = torch.cat([saliency(x[i : i + 1].clone(), index=class_idx).abs().amax(dim=1, keepdim=True)
                              for i in range(x.shape[0])])
        else:
            name = layer or target_layer(network)
            cam_class = GradCAM if method == "gradcam" else GradCAMpp
            # MONAI's default post-processing maps (min, max) to (1, 0), flipping the map: keep the raw
            # ReLU'd map and scale it ourselves, so that 1 marks what raised the abnormality logit most
            cam = cam_class(network, target_layers=name, postprocessing=lambda maps: maps)
            inputs = x.clone().requires_grad_(True)  # gradients reach frozen layers' outputs too
            if logits is not None:  # removed with the CAM's own hooks when _restored exits
                network.register_forward_hook(lambda _m, _i, output: logits.append(output.detach()))
            if method == "gradcam":
                maps = cam(inputs, class_idx=class_idx)
            else:
                maps = torch.cat([cam(inputs[i : i + 1], class_idx=class_idx) for i in range(x.shape[0])])
    return _normalise(maps.detach().float()).cpu()


def cam_to_original(cam: torch.Tensor | np.ndarray, original_shape: Sequence[int]) -> np.ndarray:
    """A CAM on the square network input mapped back to the radiograph's ``(rows, columns)``.

    Undoes :class:`~mura_monai.transforms.ResizeWithAspectPad` geometrically (its resize keeps
    the aspect ratio, its padding is symmetric): crop the padding, then resize to the original.
    """
    grid = np.asarray(cam, dtype=np.float32).reshape(np.asarray(cam).shape[-2:])
    side = grid.shape[0]
    rows, cols = int(original_shape[0]), int(original_shape[1])
    scale = side / max(rows, cols)
    h, w = max(1, int(round(rows * scale))), max(1, int(round(cols * scale)))
    top, left = (side - h) // 2, (grid.shape[1] - w) // 2
    crop = grid[top : top + h, left : left + w]
    return cv2.resize(crop, (cols, rows), interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)


def ensemble_cam(maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of members' CAMs (already on the original grid), renormalised to [0, 1].

    Weights are the caller's member weight times the member's probability, so a member that
    finds nothing abnormal contributes little; all-zero weights fall back to a plain mean.
    """
    if not maps:
        raise ValueError("no CAMs to combine")
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(maps),) or (w < 0).any():
        raise ValueError(f"need {len(maps)} non-negative weights, got {list(weights)}")
    w = w / w.sum() if w.sum() > 0 else np.full(len(maps), 1.0 / len(maps))
    combined = sum(wi * np.asarray(m, dtype=np.float32) for wi, m in zip(w, maps))
    return _normalise(torch.from_numpy(np.asarray(combined))[None]).numpy()[0]


def overlay(radiograph: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The radiograph in grey with the CAM colour-mapped over it, ``(H, W, 3)`` RGB uint8.

    Colour opacity follows the CAM (``alpha`` where it is hottest, none where it is cold), so the
    reader sees the plain radiograph wherever the networks did not look.
    """
    grey = np.clip(radiograph, 0.0, 1.0).astype(np.float32)
    weight = (np.clip(cam, 0.0, 1.0) * float(alpha)).astype(np.float32)[..., None]
    heat = cv2.applyColorMap((np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8), colormap)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    blended = grey[..., None] * (1.0 - weight) + heat * weight
    return (blended * 255.0 + 0.5).astype(np.uint8)


def write_overlay_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write PNG: {path}")
    return path


def explain_image(members: Sequence[tuple], path: str | Path, method: str = HEATMAP_METHOD,
                  alpha: float = HEATMAP_ALPHA) -> dict:
    """Ensemble heatmap of one radiograph file.

    ``members`` holds ``(network, preprocessing, weight)``: each member's own preprocessing
    (image size, enhancement) feeds its own network. Returns the original radiograph, each
    member's probability, the combined CAM on the radiograph's grid and the blended overlay.
    """
    from mura_monai.data.radiograph_reader import read_radiograph

    radiograph, _ = read_radiograph(path)
    prepared = [(network, convert_to_tensor(preprocessing({"image": str(path)})["image"], dtype=torch.float32,
                                            track_meta=False), weight)
                for network, preprocessing, weight in members]
    return explain_prepared(prepared, radiograph, method, alpha)


def explain_prepared(members: Sequence[tuple], radiograph: np.ndarray, method: str = HEATMAP_METHOD,
                     alpha: float = HEATMAP_ALPHA) -> dict:
    """:func:`explain_image` for inputs already prepared: ``(network, network input (C, H, W),
    weight)`` per member and the radiograph ``(H0, W0)`` in [0, 1]; the listener's worker has
    decoded the image once already and should not decode it again per member."""
    maps, weights, probabilities = [], [], []
    for network, image, weight in members:
        x = torch.as_tensor(image).float()[None]
        logits: list[torch.Tensor] = []
        cam = compute_cam(network, x, method=method, logits=logits)[0, 0]
        if not logits:  # SmoothGrad's passes are on noisy copies: the probability needs a clean one
            with torch.no_grad(), _eval_mode(network):
                logits.append(network(x.to(next(network.parameters()).device)))
        probability = float(torch.sigmoid(logits[0].float().reshape(-1)[0]))
        maps.append(cam_to_original(cam, radiograph.shape))
        weights.append(float(weight) * probability)
        probabilities.append(probability)
    cam = ensemble_cam(maps, weights)
    return {"radiograph": radiograph, "cam": cam, "overlay": overlay(radiograph, cam, alpha), "probabilities": probabilities}
