from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_monai.networks import VGG19, densenet169, efficientnet_b0, resnet50, vgg19

# torchvision's module indices, written out by hand rather than derived from our own config
_VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_VGG19_BN_CONVS = (0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49)
_VGG19_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn_shapes(prefix: str, channels: int) -> dict[str, tuple]:
    return {f"{prefix}.{name}": (() if name == "num_batches_tracked" else (channels,)) for name in _BN_BUFFERS}


def _torchvision_resnet50_shapes() -> dict[str, tuple]:
    """torchvision's ``resnet50().state_dict()`` names and shapes, written out independently of MONAI."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn_shapes("bn1", 64)}
    in_planes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (planes, in_planes, 1, 1)
            shapes.update(_bn_shapes(f"{p}.bn1", planes))
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes.update(_bn_shapes(f"{p}.bn2", planes))
            shapes[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            shapes.update(_bn_shapes(f"{p}.bn3", 4 * planes))
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * planes, in_planes, 1, 1)
                shapes.update(_bn_shapes(f"{p}.downsample.1", 4 * planes))
            in_planes = 4 * planes
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def _torchvision_vgg19_shapes(batch_norm: bool) -> dict[str, tuple]:
    shapes, in_channels = {}, 3
    for idx, width in zip(_VGG19_BN_CONVS if batch_norm else _VGG19_CONVS, _VGG19_WIDTHS):
        shapes.update({f"features.{idx}.weight": (width, in_channels, 3, 3), f"features.{idx}.bias": (width,)})
        if batch_norm:
            shapes.update(_bn_shapes(f"features.{idx + 1}", width))
        in_channels = width
    for idx, (n_out, n_in) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        shapes.update({f"classifier.{idx}.weight": (n_out, n_in), f"classifier.{idx}.bias": (n_out,)})
    return shapes


def _shapes(net: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    ("factory", "kwargs", "n_out"),
    [
        (resnet50, {}, 1),
        (efficientnet_b0, {"out_channels": 7}, 7),
        (efficientnet_b0, {}, 1),
        (vgg19, {"batch_norm": True}, 1),
    ],
)
def test_forward_shape_on_grayscale(factory, kwargs, n_out):
    net = factory(in_channels=1, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 64, 64)).shape == (2, n_out)


def test_resnet50_has_torchvision_layout():
    """Every tensor of torchvision's resnet50 file has a same-named, same-shaped slot: nothing to rename."""
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        net = resnet50(in_channels=3, out_channels=1000)
    assert _shapes(net) == _torchvision_resnet50_shapes()
    # ImageNet stem (MONAI defaults to stride 1) and bias-free shortcuts (MONAI defaults to a bias)
    assert net.conv1.stride == (2, 2) and net.conv1.padding == (3, 3)
    assert net.layer2[0].downsample[0].bias is None


def test_resnet50_loads_torchvision_rgb_weights(tmp_path):
    source = resnet50(in_channels=3, out_channels=1000).state_dict()  # torchvision layout, shown above
    path = tmp_path / "resnet50.pth"
    torch.save(source, path)
    net = resnet50(in_channels=1, pretrained_path=path).state_dict()
    assert torch.allclose(net["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(net["layer3.0.downsample.0.weight"], source["layer3.0.downsample.0.weight"])
    assert net["fc.weight"].shape == (1, 2048)  # the 1000-class head is left at its initialisation


@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg19_has_torchvision_layout(batch_norm):
    with torch.device("meta"):
        net = VGG19(in_channels=3, out_channels=1000, batch_norm=batch_norm)
    shapes = _shapes(net)
    assert shapes == _torchvision_vgg19_shapes(batch_norm)
    assert "features.0.weight" in shapes and "classifier.6.weight" in shapes
    assert ("features.1.running_mean" in shapes) is batch_norm


def test_vgg19_loads_torchvision_rgb_weights(tmp_path):
    source = VGG19(in_channels=3, out_channels=1000, batch_norm=True).state_dict()
    source["features.1.running_mean"].normal_()  # initialised to zeros: make the comparison meaningful
    # the two 4096-wide layers (119M of 143M parameters) are dropped to keep the file small
    del source["classifier.0.weight"], source["classifier.3.weight"]
    path = tmp_path / "vgg19_bn.pth"
    torch.save(source, path)
    net = vgg19(in_channels=1, batch_norm=True, pretrained_path=path).state_dict()
    assert torch.allclose(net["features.0.weight"], source["features.0.weight"].sum(1, keepdim=True))
    assert torch.equal(net["features.1.running_mean"], source["features.1.running_mean"])
    assert torch.equal(net["features.49.weight"], source["features.49.weight"])
    assert net["classifier.6.weight"].shape == (1, 4096)


def test_vgg19_global_pooling_scores_a_finding_alike_wherever_it_lies(tmp_path):
    torch.manual_seed(0)
    net = vgg19(hidden_features=32, pool_size=1).eval()
    assert net.classifier[0].in_features == 512  # one averaged value per channel, no per-position weights
    spot = torch.zeros(1, 1, 64, 64)
    spot[..., 8:16, 8:16] = 3.0
    moved = torch.roll(spot, shifts=(32, 32), dims=(-2, -1))  # the same spot, a whole 32-px cell away
    with torch.no_grad():
        assert torch.allclose(net(spot), net(moved), atol=1e-5)
        per_position = vgg19(hidden_features=32, pool_size=7).eval()
        per_position.features.load_state_dict(net.features.state_dict())
        assert not torch.allclose(per_position(spot), per_position(moved), atol=1e-5)
    # a torchvision-layout file still gives its convolutions; its 7x7 classifier.0 does not fit
    path = tmp_path / "vgg19_bn.pth"
    source = {k: v for k, v in VGG19(in_channels=1, hidden_features=32).state_dict().items() if k != "classifier.3.weight"}
    torch.save(source, path)
    loaded = vgg19(hidden_features=32, pool_size=1, pretrained_path=path).state_dict()
    assert torch.equal(loaded["features.49.weight"], source["features.49.weight"])
    assert loaded["classifier.0.weight"].shape == (32, 512)


@pytest.mark.parametrize(("file_has_bn", "legacy_format"), [(False, False), (True, True)])
def test_vgg19_refuses_other_batchnorm_layout(tmp_path, file_has_bn, legacy_format):
    """The BN layers shift later indices; features.30 would get another layer's 512x512 kernel silently."""
    keys = ("features.0.weight", "features.1.running_mean") if file_has_bn else ("features.0.weight", "features.2.weight")
    path = tmp_path / "vgg.pth"
    torch.save({k: torch.zeros(1) for k in keys}, path, _use_new_zipfile_serialization=not legacy_format)
    with pytest.raises(ValueError, match=f"batch_norm={file_has_bn}"):
        vgg19(batch_norm=not file_has_bn, pretrained_path=path)


def test_efficientnet_b0_loads_monai_named_rgb_weights(tmp_path):
    source = efficientnet_b0(in_channels=3, out_channels=1000).state_dict()
    path = tmp_path / "efficientnet-b0.pth"
    torch.save({"state_dict": source}, path)
    net = efficientnet_b0(in_channels=1, out_channels=7, pretrained_path=path).state_dict()
    assert torch.allclose(net["_conv_stem.weight"], source["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(net["_conv_head.weight"], source["_conv_head.weight"])
    assert net["_fc.weight"].shape == (7, 1280)


@pytest.mark.parametrize("factory", [densenet169, resnet50, efficientnet_b0])
def test_max_pooling_option_keeps_the_weights_layout(factory):
    avg, mx = factory(pooling="avg"), factory(pooling="max")
    assert list(avg.state_dict()) == list(mx.state_dict())  # checkpoints load either way
    mx.load_state_dict(avg.state_dict())
    x = torch.zeros(2, 1, 64, 64)
    x[0, :, 40:44, 40:44] = 5.0  # one small bright spot: max pooling responds differently from the mean
    # training mode: at initialisation the running statistics shrink EfficientNet's eval-mode
    # features to ~1e-14, leaving only the head's bias; same seed, same dropout draws in both
    outputs = []
    for net in (avg, mx):
        net.train()
        torch.manual_seed(0)
        with torch.no_grad():
            outputs.append(net(x))
    assert not torch.allclose(outputs[0], outputs[1], rtol=1e-3, atol=0.0)


def test_unknown_pooling_is_named():
    with pytest.raises(ValueError, match="median"):
        densenet169(pooling="median")


def test_efficientnet_batchnorm_statistics_follow_training():
    net, slow = efficientnet_b0(out_channels=7), efficientnet_b0(out_channels=7, bn_momentum=0.01)
    slow.load_state_dict(net.state_dict())
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.rand(2, 1, 32, 32) + 2.0
    for model in (net, slow):
        model.train()
        with torch.no_grad():
            model(x)
    stem, stem_slow = net._bn0.running_mean, slow._bn0.running_mean
    # one step moves the running mean a tenth of the way to the batch mean, not MONAI's hundredth
    assert torch.allclose(stem, 10 * stem_slow, rtol=1e-3, atol=1e-6) and stem.abs().max() > 0


@pytest.mark.parametrize("out_channels", [1, 7])
def test_efficientnet_head_starts_with_small_logits(out_channels):
    """The classifier gets PyTorch's fan-in bound, not TensorFlow's fan-out one, so a from-scratch
    router or abnormality model starts near chance instead of saturated."""
    torch.manual_seed(0)
    net = efficientnet_b0(out_channels=out_channels)
    fc = net._fc
    assert fc.weight.abs().max() <= 1.0 / fc.in_features ** 0.5
    net.train()
    logits = net(torch.randn(8, 1, 64, 64))
    assert logits.abs().max() < 3.0
    if out_channels == 7:
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(8) % 7)
        assert abs(loss.item() - np.log(7)) < 0.5
