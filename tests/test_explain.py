"""CAM heatmaps through monai.visualize: shapes, ranges, geometry back to the radiograph, no side effects."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from monai.transforms import Compose
from torch import nn

from mura_monai.data import LoadRadiographd
from mura_monai.explain import (
    cam_to_original,
    compute_cam,
    ensemble_cam,
    explain_image,
    overlay,
    target_layer,
    write_overlay_png,
)
from mura_monai.networks import densenet169, efficientnet_b0, resnet50
from mura_monai.networks.vgg import VGG19
from mura_monai.transforms import ResizeWithAspectPadd


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    return resnet50(in_channels=1).eval()


def _state(network):
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in network.modules())
    inplace = [m.inplace for m in network.modules() if hasattr(m, "inplace")]
    return hooks, network.training, [p.requires_grad for p in network.parameters()], inplace


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "smoothgrad"])
def test_each_method_gives_unit_range_maps_and_leaves_the_network_as_it_was(small_resnet, method):
    before = _state(small_resnet)
    x = torch.rand(2, 1, 64, 64)
    maps = compute_cam(small_resnet, x, method=method, smoothgrad_samples=2)
    assert maps.shape == (2, 1, 64, 64)
    assert not torch.isnan(maps).any()
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    assert _state(small_resnet) == before
    assert all(p.grad is None for p in small_resnet.parameters())


def test_batched_gradcam_equals_one_image_at_a_time(small_resnet):
    x = torch.rand(3, 1, 64, 64)
    batched = compute_cam(small_resnet, x)
    single = torch.cat([compute_cam(small_resnet, x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_unknown_method_is_refused(small_resnet):
    with pytest.raises(ValueError, match="gradcampp"):
        compute_cam(small_resnet, torch.rand(1, 1, 64, 64), method="lime")


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: densenet169(in_channels=1), "class_layers.relu"),
        (lambda: resnet50(in_channels=1), "layer4"),
        (lambda: efficientnet_b0(in_channels=1), "_bn1"),  # not _swish: the stem calls it too
        (lambda: VGG19(in_channels=1, hidden_features=32), None),
    ],
    ids=["densenet169", "resnet50", "efficientnet_b0", "vgg19"],
)
def test_target_layer_is_the_last_spatial_feature_map(build, expected):
    network = build().eval()
    name = target_layer(network)
    if expected:
        assert name == expected
    module = dict(network.named_modules())[name]
    assert not isinstance(module, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d, torch.nn.MaxPool2d))
    seen = {}
    handle = module.register_forward_hook(lambda _m, _i, out: seen.update(shape=out.shape))
    with torch.no_grad():
        network(torch.zeros(1, 1, 128, 128))
    handle.remove()
    assert len(seen["shape"]) == 4 and min(seen["shape"][2:]) > 1


def test_cam_maps_back_to_the_same_place_on_a_non_square_radiograph(tmp_path):
    """A bright square drawn on the original lands where the CAM's hot spot maps back to."""
    rows, cols = 100, 60
    image = np.zeros((rows, cols), np.uint8)
    image[70:80, 10:20] = 255
    cv2.imwrite(str(tmp_path / "r.png"), image)
    prepare = Compose([LoadRadiographd(keys="image"), ResizeWithAspectPadd(keys="image", spatial_size=64)])
    net_input = np.asarray(prepare({"image": str(tmp_path / "r.png")})["image"])[0]
    cam = (net_input > 0.5).astype(np.float32)  # a "CAM" hot exactly where the square went
    back = cam_to_original(cam, (rows, cols))
    assert back.shape == (rows, cols)
    ys, xs = np.nonzero(back > 0.5)
    assert abs(ys.mean() - 74.5) < 2 and abs(xs.mean() - 14.5) < 2


def test_ensemble_cam_weights_members_and_ignores_a_zero_weight():
    a = np.zeros((10, 10), np.float32)
    a[0, 0] = 1
    b = np.zeros((10, 10), np.float32)
    b[9, 9] = 1
    only_a = ensemble_cam([a, b], [1.0, 0.0])
    assert only_a[0, 0] == 1 and only_a[9, 9] == 0
    both = ensemble_cam([a, b], [1.0, 3.0])
    assert both[9, 9] == 1 and 0 < both[0, 0] < 0.5
    np.testing.assert_allclose(ensemble_cam([a, b], [0, 0]), ensemble_cam([a, b], [1, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        ensemble_cam([a, b], [1.0])


def test_overlay_colours_the_hot_region(tmp_path):
    radiograph = np.full((40, 30), 0.5, np.float32)
    cam = np.zeros((40, 30), np.float32)
    cam[:10] = 1.0
    rgb = overlay(radiograph, cam, alpha=0.5)
    assert rgb.shape == (40, 30, 3) and rgb.dtype == np.uint8
    assert rgb[35, 15, 0] == rgb[35, 15, 1] == rgb[35, 15, 2] == 128  # cold: the plain radiograph
    assert rgb[5, 15, 0] > rgb[5, 15, 2] + 50  # hot: red over it
    path = write_overlay_png(tmp_path / "o" / "x.png", rgb)
    assert cv2.imread(str(path)).shape == (40, 30, 3)


def test_explain_image_returns_overlay_on_the_original_grid(tmp_path, small_resnet):
    cv2.imwrite(str(tmp_path / "r.png"), np.random.default_rng(0).integers(0, 255, (90, 50), dtype=np.uint8))
    prepare = Compose([LoadRadiographd(keys="image"), ResizeWithAspectPadd(keys="image", spatial_size=64)])
    before = _state(small_resnet)
    result = explain_image([(small_resnet, prepare, 1.0), (small_resnet, prepare, 0.5)], tmp_path / "r.png")
    assert result["overlay"].shape == (90, 50, 3) and result["cam"].shape == (90, 50)
    assert len(result["probabilities"]) == 2 and result["probabilities"][0] == pytest.approx(result["probabilities"][1])
    assert _state(small_resnet) == before


class BrightnessNet(nn.Module):
    """A real network whose Grad-CAM is its input's brightness (positive 1x1 conv, ReLU, mean)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_cam_is_high_where_the_abnormality_logit_was_raised(method):
    """1 marks the region that raised the logit (MONAI's default post-processing would flip it)."""
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 40:53, 26:38] = 1.0
    cam = compute_cam(BrightnessNet(), image, method=method)[0, 0]
    assert float(cam[40:53, 26:38].mean()) > 0.9 and float(cam[:30].max()) < 0.1
